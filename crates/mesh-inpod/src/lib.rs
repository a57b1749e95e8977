//! In-pod capture, shared by the CNI plugin (`ambient-cni`) and the node agent (`ztunnel`):
//!
//! - [`protocol`]: the enrollment request/answer exchanged over the agent's unix socket;
//! - [`rules`]: the in-pod redirection rules (istio-cni semantics), installed and removed inside
//!   a pod's network namespace — by the plugin on ADD/DEL, and by ztunnel when a running pod
//!   joins or leaves the mesh through a label change.

pub mod protocol;
pub mod rules;
