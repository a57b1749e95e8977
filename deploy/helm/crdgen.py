#!/usr/bin/env python3
"""Generates the chart's CRD templates (deploy/helm/ambient-rs/templates/crds-*.yaml) from the
compact schema below, so the five Istio kinds and four Gateway API kinds share one set of
building blocks (string matches, selectors, target references, durations).

Schemas are structural and written from the published APIs (istio/api security/v1,
networking/v1; gateway-api v1 standard channel plus the experimental HTTPRoute `retry` and the
CORS filter that Istio implements). As in Istio's own CRDs, only `status` of the Istio kinds
preserves unknown fields; everything else is typed, so kubectl's field validation and the API
server's pruning behave as they do with Istio's CRDs.

    python3 deploy/helm/crdgen.py          # rewrite the templates
    python3 deploy/helm/crdgen.py --check  # exit 1 if a template differs from this script
"""

import os
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "ambient-rs", "templates")


# -- schema building blocks -------------------------------------------------------------------------


def s(desc=None, **kw):
    d = {"type": "string"}
    if desc:
        d["description"] = desc
    d.update(kw)
    return d


def i32(desc=None, **kw):
    d = {"type": "integer", "format": "int32"}
    if desc:
        d["description"] = desc
    d.update(kw)
    return d


def u32(desc=None, nullable=False, **kw):
    d = {"type": "integer", "minimum": 0, "maximum": 4294967295}
    if desc:
        d["description"] = desc
    if nullable:
        d["nullable"] = True
    d.update(kw)
    return d


def b(desc=None):
    d = {"type": "boolean"}
    if desc:
        d["description"] = desc
    return d


def num(desc=None):
    d = {"type": "number", "format": "double"}
    if desc:
        d["description"] = desc
    return d


def dur(desc=None):
    """A protobuf Duration ("1s", "100ms") as Istio's CRDs write it."""
    d = {"type": "string", "x-kubernetes-validations": [
        {"rule": "duration(self) >= duration('1ms')", "message": "must be a valid duration greater than 1ms"}]}
    if desc:
        d["description"] = desc
    return d


def arr(items, desc=None, **kw):
    d = {"type": "array", "items": items}
    if desc:
        d["description"] = desc
    d.update(kw)
    return d


def strs(desc=None, **kw):
    return arr({"type": "string"}, desc, **kw)


def smap(values=None, desc=None, **kw):
    d = {"type": "object", "additionalProperties": values or {"type": "string"}}
    if desc:
        d["description"] = desc
    d.update(kw)
    return d


def obj(props, desc=None, required=None, **kw):
    d = {"type": "object", "properties": props}
    if desc:
        d["description"] = desc
    if required:
        d["required"] = required
    d.update(kw)
    return d


def one_of(*fields):
    """Istio's encoding of a protobuf oneof: at most one of the fields is set."""
    return [{"not": {"anyOf": [{"required": [f]} for f in fields]}}] + [{"required": [f]} for f in fields]


def enum(values, desc=None):
    return s(desc, enum=list(values))


# -- Istio ------------------------------------------------------------------------------------------

SELECTOR = obj({"matchLabels": smap(desc="One or more labels that indicate a specific set of pods/VMs on which a policy should be applied.", maxProperties=4096)},
               "Optional. The selector decides where to apply the policy. If not set, the policy applies to all workloads in its namespace (or mesh-wide in the root namespace).")
TARGET_REF = obj({
    "group": s("group is the group of the target resource.", maxLength=253),
    "kind": s("kind is kind of the target resource.", maxLength=63, minLength=1),
    "name": s("name is the name of the target resource.", maxLength=253, minLength=1),
    "namespace": s("namespace is the namespace of the referent; must be the policy's namespace when set."),
}, "A reference to a Gateway or Service the policy attaches to (waypoint policy).", ["kind", "name"])
TARGET_REFS = arr(TARGET_REF, "Optional. The resources the policy applies to (waypoint policy).", maxItems=16)
SELECTOR_XOR_TARGET = [{
    "rule": "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1",
    "message": "only one of targetRefs or selector can be set",
}]

SOURCE = obj({
    "principals": strs("Optional. A list of peer identities derived from the peer certificate.", maxItems=512),
    "notPrincipals": strs("Optional. A list of negative match of peer identities.", maxItems=512),
    "requestPrincipals": strs("Optional. A list of request identities derived from the JWT.", maxItems=512),
    "notRequestPrincipals": strs("Optional. A list of negative match of request identities.", maxItems=512),
    "namespaces": strs("Optional. A list of namespaces derived from the peer certificate.", maxItems=512),
    "notNamespaces": strs("Optional. A list of negative match of namespaces.", maxItems=512),
    "serviceAccounts": strs("Optional. A list of Kubernetes service accounts (sa, or ns/sa).", maxItems=16),
    "notServiceAccounts": strs("Optional. A list of negative match of service accounts.", maxItems=16),
    "ipBlocks": strs("Optional. A list of IP blocks, populated from the source address of the IP packet.", maxItems=512),
    "notIpBlocks": strs("Optional. A list of negative match of IP blocks.", maxItems=512),
    "remoteIpBlocks": strs("Optional. A list of IP blocks, populated from X-Forwarded-For or the proxy protocol.", maxItems=512),
    "notRemoteIpBlocks": strs("Optional. A list of negative match of remote IP blocks.", maxItems=512),
}, "Source specifies the source of a request.", **{"x-kubernetes-validations": [
    {"rule": "(has(self.serviceAccounts) ? 1 : 0) + (has(self.principals) ? 1 : 0) <= 1",
     "message": "Cannot set serviceAccounts with principals"},
    {"rule": "(has(self.notServiceAccounts) ? 1 : 0) + (has(self.notPrincipals) ? 1 : 0) <= 1",
     "message": "Cannot set notServiceAccounts with notPrincipals"}]})
OPERATION = obj({
    "hosts": strs("Optional. A list of hosts as specified in the HTTP request.", maxItems=512),
    "notHosts": strs("Optional. A list of negative match of hosts.", maxItems=512),
    "ports": strs("Optional. A list of ports as specified in the connection.", maxItems=512),
    "notPorts": strs("Optional. A list of negative match of ports.", maxItems=512),
    "methods": strs("Optional. A list of methods as specified in the HTTP request.", maxItems=512),
    "notMethods": strs("Optional. A list of negative match of methods.", maxItems=512),
    "paths": strs("Optional. A list of paths as specified in the HTTP request.", maxItems=512),
    "notPaths": strs("Optional. A list of negative match of paths.", maxItems=512),
}, "Operation specifies the operation of a request.")
CONDITION = obj({
    "key": s("The name of an Istio attribute."),
    "values": strs("Optional. A list of allowed values for the attribute.", maxItems=512),
    "notValues": strs("Optional. A list of negative match of values for the attribute.", maxItems=512),
}, "Condition specifies additional required attributes.", ["key"])

AUTHORIZATION_POLICY = obj({
    "action": enum(["ALLOW", "DENY", "AUDIT", "CUSTOM"], "Optional. The action to take if the request is matched with the rules. Default is ALLOW if not specified."),
    "provider": obj({"name": s("Specifies the name of the extension provider.")}, "Specifies detailed configuration of the CUSTOM action."),
    "rules": arr(obj({
        "from": arr(obj({"source": SOURCE}), "Optional. from specifies the source of a request.", maxItems=512),
        "to": arr(obj({"operation": OPERATION}), "Optional. to specifies the operation of a request.", maxItems=512),
        "when": arr(CONDITION, "Optional. when specifies a list of additional conditions of a request.", maxItems=512),
    }), "Optional. A list of rules to match the request.", maxItems=512),
    "selector": SELECTOR,
    "targetRef": TARGET_REF,
    "targetRefs": TARGET_REFS,
}, "Configuration for access control on workloads. See more details at: https://istio.io/docs/reference/config/security/authorization-policy.html",
    oneOf=one_of("provider"), **{"x-kubernetes-validations": SELECTOR_XOR_TARGET})

MTLS_MODE = enum(["UNSET", "DISABLE", "PERMISSIVE", "STRICT"], "Defines the mTLS mode used for peer authentication.")
PEER_AUTHENTICATION = obj({
    "mtls": obj({"mode": MTLS_MODE}, "Mutual TLS settings for workload."),
    "portLevelMtls": smap(obj({"mode": MTLS_MODE}), "Port specific mutual TLS settings.", minProperties=1,
                          **{"x-kubernetes-validations": [{"rule": "self.all(key, 0 < int(key) && int(key) <= 4294967295)",
                                                           "message": "port must be between 1-4294967295"}]}),
    "selector": SELECTOR,
}, "Peer authentication configuration for workloads. See more details at: https://istio.io/docs/reference/config/security/peer_authentication.html",
    **{"x-kubernetes-validations": [{
        "rule": "has(self.portLevelMtls) ? (((has(self.selector) && has(self.selector.matchLabels)) ? self.selector.matchLabels : {}).size() > 0) : true",
        "message": "portLevelMtls requires selector"}]})

JWT_RULE = obj({
    "issuer": s("Identifies the issuer that issued the JWT.", minLength=1),
    "audiences": strs("The list of JWT audiences that are allowed to access."),
    "jwksUri": s("URL of the provider's public key set to validate signature of the JWT.", maxLength=2048, minLength=1),
    "jwks": s("JSON Web Key Set of public keys to validate signature of the JWT."),
    "fromHeaders": arr(obj({"name": s("The HTTP header name."), "prefix": s("The prefix that should be stripped before decoding the token.")}, None, ["name"]),
                       "List of header locations from which JWT is expected."),
    "fromParams": strs("List of query parameters from which JWT is expected."),
    "fromCookies": strs("List of cookie names from which JWT is expected."),
    "outputPayloadToHeader": s("This field specifies the header name to output a successfully verified JWT payload to the backend."),
    "forwardOriginalToken": b("If set to true, the original token will be kept for the upstream request."),
    "outputClaimToHeaders": arr(obj({"header": s("The name of the header to be created.", pattern="^[-_A-Za-z0-9]+$"),
                                     "claim": s("The name of the claim to be copied from.")}),
                                "This field specifies a list of operations to copy the claim to HTTP headers on a successfully verified token."),
    "timeout": dur("The maximum amount of time that the resolver, determined by the PILOT_JWT_ENABLE_REMOTE_JWKS environment variable, will spend waiting for the JWKS to be fetched."),
}, None, ["issuer"], **{"x-kubernetes-validations": [
    {"rule": "(has(self.jwksUri) ? 1 : 0) + (has(self.jwks) ? 1 : 0) <= 1", "message": "only one of jwks or jwksUri can be set"}]})
REQUEST_AUTHENTICATION = obj({
    "jwtRules": arr(JWT_RULE, "Define the list of JWTs that can be validated at the selected workloads' proxy.", maxItems=4096),
    "selector": SELECTOR,
    "targetRef": TARGET_REF,
    "targetRefs": TARGET_REFS,
}, "Request authentication configuration for workloads. See more details at: https://istio.io/docs/reference/config/security/request_authentication.html",
    **{"x-kubernetes-validations": SELECTOR_XOR_TARGET})

PORT_SELECTOR = obj({"number": i32("Valid port number", minimum=0, maximum=65535)}, "Specifies the number of a port on the destination service.")
TLS_SETTINGS = obj({
    "mode": enum(["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"], "Indicates whether connections to this port should be secured using TLS."),
    "clientCertificate": s("REQUIRED if mode is MUTUAL."),
    "privateKey": s("REQUIRED if mode is MUTUAL."),
    "caCertificates": s("OPTIONAL: The path to the file containing certificate authority certificates."),
    "credentialName": s("The name of the secret that holds the TLS certs for the client."),
    "subjectAltNames": strs("A list of alternate names to verify the subject identity in the certificate."),
    "sni": s("SNI string to present to the server during TLS handshake."),
    "insecureSkipVerify": {"type": "boolean", "nullable": True, "description": "InsecureSkipVerify specifies whether the proxy should skip verifying the CA signature and SAN for the server certificate."},
    "caCrl": s("OPTIONAL: The path to the file containing the certificate revocation list (CRL)."),
}, "TLS related settings for connections to the upstream service.")
CONSISTENT_HASH = obj({
    "httpHeaderName": s("Hash based on a specific HTTP header."),
    "httpCookie": obj({"name": s("Name of the cookie."), "path": s("Path to set for the cookie."), "ttl": dur("Lifetime of the cookie."),
                       "attributes": arr(obj({"name": s("The name of the cookie attribute."), "value": s("The optional value of the cookie attribute.")}, None, ["name"]), "Additional attributes for the cookie.")},
                      "Hash based on HTTP cookie.", ["name"]),
    "useSourceIp": b("Hash based on the source IP address."),
    "httpQueryParameterName": s("Hash based on a specific HTTP query parameter."),
    "ringHash": obj({"minimumRingSize": {"type": "integer", "minimum": 0, "description": "The minimum number of virtual nodes to use for the hash ring."}}, "The ring/modulo hash load balancer implements consistent hashing to backend hosts."),
    "maglev": obj({"tableSize": {"type": "integer", "minimum": 0, "description": "The table size for Maglev hashing."}}, "The Maglev load balancer implements consistent hashing to backend hosts."),
    "minimumRingSize": {"type": "integer", "minimum": 0, "description": "Deprecated."},
}, "Consistent Hash-based load balancing can be used to provide soft session affinity based on HTTP headers, cookies or other properties.",
    allOf=[{"oneOf": one_of("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")},
           {"oneOf": one_of("ringHash", "maglev", "minimumRingSize")}])
LOCALITY_LB = obj({
    "distribute": arr(obj({"from": s("Originating locality, '/' separated, e.g."), "to": smap({"type": "integer", "maximum": 4294967295, "minimum": 0}, "Map of upstream localities to traffic distribution weights.")}),
                      "Optional: only one of distribute, failover or failoverPriority can be set."),
    "enabled": {"type": "boolean", "nullable": True, "description": "Enable locality load balancing."},
    "failover": arr(obj({"from": s("Originating region."), "to": s("Destination region the traffic will fail over to when endpoints in the 'from' region becomes unhealthy.")}),
                    "Optional: only one of distribute, failover or failoverPriority can be set."),
    "failoverPriority": strs("failoverPriority is an ordered list of labels used to sort endpoints to do priority based load balancing."),
}, "Locality load balancer settings, this will override mesh wide settings in entirety, meaning no merging would be performed between this object and the object one in MeshConfig.")
LOAD_BALANCER = obj({
    "simple": enum(["UNSPECIFIED", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN"]),
    "consistentHash": CONSISTENT_HASH,
    "localityLbSetting": LOCALITY_LB,
    "warmupDurationSecs": dur("Deprecated: use `warmup` instead."),
    "warmup": obj({"duration": dur("Duration of warmup mode."),
                   "minimumPercent": {"type": "number", "format": "double", "nullable": True, "minimum": 0, "maximum": 100, "description": "Configures the minimum percentage of origin weight."},
                   "aggression": {"type": "number", "format": "double", "nullable": True, "minimum": 1, "description": "This parameter controls the speed of traffic increase over the warmup duration."}},
                  "Represents the warmup configuration of Service.", ["duration"]),
}, "Settings controlling the load balancer algorithms.", oneOf=one_of("simple", "consistentHash"))
CONNECTION_POOL = obj({
    "tcp": obj({
        "maxConnections": i32("Maximum number of HTTP1 /TCP connections to a destination host."),
        "connectTimeout": dur("TCP connection timeout."),
        "tcpKeepalive": obj({"probes": u32("Maximum number of keepalive probes to send without response before deciding the connection is dead."),
                             "time": dur("The time duration a connection needs to be idle before keep-alive probes start being sent."),
                             "interval": dur("The time duration between keep-alive probes.")},
                            "If set then set SO_KEEPALIVE on the socket to enable TCP Keepalives."),
        "maxConnectionDuration": dur("The maximum duration of a connection."),
        "idleTimeout": dur("The idle timeout for TCP connections."),
    }, "Settings common to both HTTP and TCP upstream connections."),
    "http": obj({
        "http1MaxPendingRequests": i32("Maximum number of requests that will be queued while waiting for a ready connection pool connection."),
        "http2MaxRequests": i32("Maximum number of active requests to a destination."),
        "maxRequestsPerConnection": i32("Maximum number of requests per connection to a backend."),
        "maxRetries": i32("Maximum number of retries that can be outstanding to all hosts in a cluster at a given time."),
        "idleTimeout": dur("The idle timeout for upstream connection pool connections."),
        "h2UpgradePolicy": enum(["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"], "Specify if http1.1 connection should be upgraded to http2 for the associated destination."),
        "useClientProtocol": b("If set to true, client protocol will be preserved while initiating connection to backend."),
        "maxConcurrentStreams": i32("The maximum number of concurrent streams allowed for a peer on one HTTP/2 connection."),
    }, "HTTP connection pool settings."),
}, "Settings controlling the volume of connections to an upstream service.")
OUTLIER_DETECTION = obj({
    "splitExternalLocalOriginErrors": b("Determines whether to distinguish local origin failures from external errors."),
    "consecutiveLocalOriginFailures": u32("The number of consecutive locally originated failures before ejection occurs.", nullable=True),
    "consecutiveGatewayErrors": u32("Number of gateway errors before a host is ejected from the connection pool.", nullable=True),
    "consecutive5xxErrors": u32("Number of 5xx errors before a host is ejected from the connection pool.", nullable=True),
    "interval": dur("Time interval between ejection sweep analysis."),
    "baseEjectionTime": dur("Minimum ejection duration."),
    "maxEjectionPercent": i32("Maximum % of hosts in the load balancing pool for the upstream service that can be ejected."),
    "minHealthPercent": i32("Outlier detection will be enabled as long as the associated load balancing pool has at least `minHealthPercent` hosts in healthy mode."),
    "consecutiveErrors": i32("Deprecated: use consecutive5xxErrors."),
}, "Settings controlling eviction of unhealthy hosts from the load balancing pool.")
TUNNEL = obj({"protocol": s("Specifies which protocol to use for tunneling the downstream connection."),
              "targetHost": s("Specifies a host to which the downstream connection is tunneled."),
              "targetPort": u32("Specifies a port to which the downstream connection is tunneled.")},
             "Configuration of tunneling TCP over other transport or application layers for the host configured in the DestinationRule.", ["targetHost", "targetPort"])
TRAFFIC_POLICY_COMMON = {
    "loadBalancer": LOAD_BALANCER,
    "connectionPool": CONNECTION_POOL,
    "outlierDetection": OUTLIER_DETECTION,
    "tls": TLS_SETTINGS,
}
TRAFFIC_POLICY = obj(dict(TRAFFIC_POLICY_COMMON, **{
    "portLevelSettings": arr(obj(dict(TRAFFIC_POLICY_COMMON, port=PORT_SELECTOR)), "Traffic policies specific to individual ports.", maxItems=4096),
    "tunnel": TUNNEL,
    "proxyProtocol": obj({"version": enum(["V1", "V2"], "The PROXY protocol version to use.")}, "The upstream PROXY protocol settings."),
    "retryBudget": obj({"percent": {"type": "number", "format": "double", "nullable": True, "minimum": 0, "maximum": 100, "description": "Specifies the limit on concurrent retries as a percentage of the sum of active requests and active pending requests."},
                        "minRetryConcurrency": u32("Specifies the minimum retry concurrency allowed for the retry budget.")},
                       "Specifies a limit on concurrent retries in relation to the number of active requests."),
}), "Traffic policies to apply (load balancing policy, connection pool sizes, outlier detection).")
DESTINATION_RULE = obj({
    "host": s("The name of a service from the service registry."),
    "trafficPolicy": TRAFFIC_POLICY,
    "subsets": arr(obj({"name": s("Name of the subset."), "labels": smap(desc="Labels apply a filter over the endpoints of a service in the service registry."),
                        "trafficPolicy": TRAFFIC_POLICY}, None, ["name"]),
                   "One or more named sets that represent individual versions of a service."),
    "exportTo": strs("A list of namespaces to which this destination rule is exported."),
    "workloadSelector": obj({"matchLabels": smap(desc="One or more labels that indicate a specific set of pods/VMs on which a policy should be applied.", maxProperties=4096)},
                            "Criteria used to select the specific set of pods/VMs on which this `DestinationRule` configuration should be applied."),
}, "Configuration affecting load balancing, outlier detection, etc. See more details at: https://istio.io/docs/reference/config/networking/destination-rule.html",
    required=["host"])

STRING_MATCH = obj({"exact": s(), "prefix": s(), "regex": s("RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax).")},
                   None, oneOf=one_of("exact", "prefix", "regex"))
DESTINATION = obj({"host": s("The name of a service from the service registry."),
                   "subset": s("The name of a subset within the service."),
                   "port": PORT_SELECTOR}, "Destination uniquely identifies the instances of a service to which the request/connection should be forwarded to.", ["host"])
HEADER_OPS = obj({"add": smap(), "remove": strs(), "set": smap()})
PERCENT = obj({"value": num()}, "Percentage of the traffic.")
HTTP_MATCH = obj({
    "name": s("The name assigned to a match."),
    "uri": STRING_MATCH,
    "scheme": STRING_MATCH,
    "method": STRING_MATCH,
    "authority": STRING_MATCH,
    "headers": smap(STRING_MATCH, "The header keys must be lowercase and use hyphen as the separator, e.g."),
    "port": u32("Specifies the ports on the host that is being addressed."),
    "sourceLabels": smap(desc="One or more labels that constrain the applicability of a rule to source (client) workloads with the given labels."),
    "gateways": strs("Names of gateways where the rule should be applied."),
    "queryParams": smap(STRING_MATCH, "Query parameters for matching."),
    "ignoreUriCase": b("Flag to specify whether the URI matching should be case-insensitive."),
    "withoutHeaders": smap(STRING_MATCH, "withoutHeader has the same syntax with the header, but has opposite meaning."),
    "sourceNamespace": s("Source namespace constraining the applicability of a rule to workloads in that namespace."),
    "statPrefix": s("The human readable prefix to use when emitting statistics for this route."),
})
HTTP_ROUTE = obj({
    "name": s("The name assigned to the route for debugging purposes."),
    "match": arr(HTTP_MATCH, "Match conditions to be satisfied for the rule to be activated."),
    "route": arr(obj({"destination": DESTINATION, "weight": i32("Weight specifies the relative proportion of traffic to be forwarded to the destination."),
                      "headers": obj({"request": HEADER_OPS, "response": HEADER_OPS})}, None, ["destination"]),
                 "A HTTP rule can either return a direct_response, redirect or forward (default) traffic."),
    "redirect": obj({"uri": s(), "authority": s(), "port": u32("On a redirect, overwrite the port portion of the URL with this value."),
                     "derivePort": enum(["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"]), "scheme": s(), "redirectCode": u32()},
                    "A HTTP rule can either return a direct_response, redirect or forward (default) traffic.",
                    allOf=[{"oneOf": one_of("port", "derivePort")}]),
    "directResponse": obj({"status": u32("Specifies the HTTP response status to be returned."),
                           "body": obj({"string": s("response body as a string"), "bytes": s("response body as base64 encoded bytes.", format="binary")},
                                       "Specifies the content of the response body.", oneOf=one_of("string", "bytes"))},
                          "A HTTP rule can either return a direct_response, redirect or forward (default) traffic.", ["status"]),
    "delegate": obj({"name": s("Name specifies the name of the delegate VirtualService."), "namespace": s("Namespace specifies the namespace where the delegate VirtualService resides.")},
                    "Delegate is used to specify the particular VirtualService which can be used to define delegate HTTPRoute."),
    "rewrite": obj({"uri": s(), "authority": s(), "uriRegexRewrite": obj({"match": s("RE2 style regex-based match."), "rewrite": s("The string that should replace into matching portions of original URI.")})},
                   "Rewrite HTTP URIs and Authority headers."),
    "timeout": dur("Timeout for HTTP requests, default is disabled."),
    "retries": obj({"attempts": i32("Number of retries to be allowed for a given request."), "perTryTimeout": dur("Timeout per attempt for a given request, including the initial call and any retries."),
                    "retryOn": s("Specifies the conditions under which retry takes place."),
                    "retryRemoteLocalities": {"type": "boolean", "nullable": True, "description": "Flag to specify whether the retries should retry to other localities."},
                    "retryIgnorePreviousHosts": {"type": "boolean", "nullable": True, "description": "Flag to specify whether the retries should ignore previously tried hosts during retry."},
                    "backoff": dur("Specifies the minimum duration between retry attempts.")},
                   "Retry policy for HTTP requests."),
    "fault": obj({"delay": obj({"fixedDelay": dur("Add a fixed delay before forwarding the request."), "exponentialDelay": dur(),
                                "percentage": PERCENT, "percent": i32("Percentage of requests on which the delay will be injected (0-100).")},
                               "Delay requests before forwarding, emulating various failures such as network issues, overloaded upstream service, etc.",
                               oneOf=one_of("fixedDelay", "exponentialDelay")),
                  "abort": obj({"httpStatus": i32("HTTP status code to use to abort the Http request."), "grpcStatus": s("GRPC status code to use to abort the request."),
                                "http2Error": s(), "percentage": PERCENT},
                               "Abort Http request attempts and return error codes back to downstream service, giving the impression that the upstream service is faulty.",
                               oneOf=one_of("httpStatus", "grpcStatus", "http2Error"))},
                 "Fault injection policy to apply on HTTP traffic at the client side."),
    "mirror": DESTINATION,
    "mirrors": arr(obj({"destination": DESTINATION, "percentage": PERCENT}, None, ["destination"]), "Specifies the destinations to mirror HTTP traffic in addition to the original destination."),
    "mirrorPercentage": PERCENT,
    "mirrorPercent": {"type": "integer", "nullable": True, "maximum": 4294967295, "minimum": 0, "description": "Percentage of the traffic to be mirrored by the `mirror` field."},
    "mirror_percent": {"type": "integer", "nullable": True, "maximum": 4294967295, "minimum": 0, "description": "Percentage of the traffic to be mirrored by the `mirror` field."},
    "corsPolicy": obj({"allowOrigins": arr(STRING_MATCH, "String patterns that match allowed origins."), "allowOrigin": strs(),
                       "allowMethods": strs("List of HTTP methods allowed to access the resource."), "allowHeaders": strs("List of HTTP headers that can be used when requesting the resource."),
                       "exposeHeaders": strs("A list of HTTP headers that the browsers are allowed to access."), "maxAge": dur("Specifies how long the results of a preflight request can be cached."),
                       "allowCredentials": {"type": "boolean", "nullable": True, "description": "Indicates whether the caller is allowed to send the actual request (not the preflight) using credentials."},
                       "unmatchedPreflights": enum(["UNSPECIFIED", "FORWARD", "IGNORE"], "Indicates whether preflight requests not matching the configured allowed origin shouldn't be forwarded to the upstream.")},
                      "Cross-Origin Resource Sharing policy (CORS)."),
    "headers": obj({"request": HEADER_OPS, "response": HEADER_OPS}),
})
L4_MATCH = {
    "destinationSubnets": strs("IPv4 or IPv6 ip addresses of destination with optional subnet."),
    "port": u32("Specifies the port on the host that is being addressed."),
    "sourceLabels": smap(desc="One or more labels that constrain the applicability of a rule to workloads with the given labels."),
    "gateways": strs("Names of gateways where the rule should be applied."),
    "sourceNamespace": s("Source namespace constraining the applicability of a rule to workloads in that namespace."),
}
ROUTE_DESTINATION = arr(obj({"destination": DESTINATION, "weight": i32("Weight specifies the relative proportion of traffic to be forwarded to the destination.")}, None, ["destination"]),
                        "The destination to which the connection should be forwarded to.")
VIRTUAL_SERVICE = obj({
    "hosts": strs("The destination hosts to which traffic is being sent."),
    "gateways": strs("The names of gateways and sidecars that should apply these routes."),
    "http": arr(HTTP_ROUTE, "An ordered list of route rules for HTTP traffic."),
    "tls": arr(obj({"match": arr(obj(dict(L4_MATCH, sniHosts=strs("SNI (server name indicator) to match on.")), None, ["sniHosts"]), "Match conditions to be satisfied for the rule to be activated."),
                    "route": ROUTE_DESTINATION}, None, ["match"]),
               "An ordered list of route rule for non-terminated TLS & HTTPS traffic."),
    "tcp": arr(obj({"match": arr(obj(dict(L4_MATCH, sourceSubnet=s())), "Match conditions to be satisfied for the rule to be activated."),
                    "route": ROUTE_DESTINATION}),
               "An ordered list of route rules for opaque TCP traffic."),
    "exportTo": strs("A list of namespaces to which this virtual service is exported."),
}, "Configuration affecting label/content routing, sni routing, etc. See more details at: https://istio.io/docs/reference/config/networking/virtual-service.html")

ISTIO_STATUS = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def istio_crd(group, kind, plural, short, spec, columns, category):
    def version(name, storage):
        return {
            "name": name,
            "served": True,
            "storage": storage,
            "subresources": {"status": {}},
            "additionalPrinterColumns": columns + [{
                "name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp",
                "description": "CreationTimestamp is a timestamp representing the server time when this object was created."}],
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": spec, "status": ISTIO_STATUS}, "required": ["spec"]}},
        }
    names = {"categories": ["istio-io", category], "kind": kind, "listKind": kind + "List", "plural": plural, "singular": kind.lower()}
    if short:
        names["shortNames"] = short
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}", "annotations": {"helm.sh/resource-policy": "keep"},
                     "labels": {"app": "istio-pilot", "istio": group.split(".")[0]}},
        "spec": {"group": group, "names": names, "scope": "Namespaced",
                 # v1 is stored, as the API server converts nothing between these identical schemas.
                 "versions": [version("v1", True), version("v1beta1", False)]},
    }


# -- Gateway API (v1, standard channel shapes) -------------------------------------------------------

GW_NAME = s("Name is the name of the referent.", maxLength=253, minLength=1)
GW_NS = s("Namespace is the namespace of the referent.", maxLength=63, minLength=1, pattern="^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
GW_GROUP = s("Group is the group of the referent.", maxLength=253, pattern="^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
GW_KIND = s("Kind is kind of the referent.", maxLength=63, minLength=1, pattern="^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
GW_PORT = i32("Port number.", minimum=1, maximum=65535)
GW_HOSTNAME = s("Hostname as defined by RFC 1123, optionally with a leading wildcard label.", maxLength=253, minLength=1,
                pattern="^(\\*\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
GW_SECTION = s("SectionName is the name of a section within the target resource (a Gateway listener name).", maxLength=253, minLength=1,
               pattern="^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
PARENT_REF = obj({"group": dict(GW_GROUP, default="gateway.networking.k8s.io"), "kind": dict(GW_KIND, default="Gateway"),
                  "namespace": GW_NS, "name": GW_NAME, "sectionName": GW_SECTION, "port": GW_PORT},
                 "ParentReference identifies an API object (usually a Gateway, or a Service for the GAMMA mesh pattern) that can be considered a parent of this resource.", ["name"])
CONDITION_V1 = obj({
    "type": s("type of condition in CamelCase or in foo.example.com/CamelCase.", maxLength=316),
    "status": enum(["True", "False", "Unknown"], "status of the condition, one of True, False, Unknown."),
    "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
    "lastTransitionTime": s("lastTransitionTime is the last time the condition transitioned from one status to another.", format="date-time"),
    "reason": s("reason contains a programmatic identifier indicating the reason for the condition's last transition.", maxLength=1024, minLength=1),
    "message": s("message is a human readable message indicating details about the transition.", maxLength=32768),
}, None, ["lastTransitionTime", "message", "reason", "status", "type"])
CONDITIONS = arr(CONDITION_V1, "Conditions describe the current conditions.", maxItems=8,
                 **{"x-kubernetes-list-map-keys": ["type"], "x-kubernetes-list-type": "map"})
ROUTE_STATUS = obj({"parents": arr(obj({"parentRef": PARENT_REF, "controllerName": s("ControllerName is a domain/path string that indicates the name of the controller that wrote this status.", maxLength=253, minLength=1),
                                        "conditions": CONDITIONS}, None, ["controllerName", "parentRef"]),
                                   "Parents is a list of parent resources (usually Gateways) that are associated with the route, and the status of the route with respect to each parent.", maxItems=32)},
                   "Status defines the current state of the route.", ["parents"])
HEADER_NAME = s("Name is the name of the HTTP Header to be matched.", maxLength=256, minLength=1, pattern="^[A-Za-z0-9!#$%&'*+\\-.^_\\x60|~]+$")
HEADER_MOD = obj({"set": arr(obj({"name": HEADER_NAME, "value": s(None, maxLength=4096, minLength=1)}, None, ["name", "value"]), None, maxItems=16,
                             **{"x-kubernetes-list-map-keys": ["name"], "x-kubernetes-list-type": "map"}),
                  "add": arr(obj({"name": HEADER_NAME, "value": s(None, maxLength=4096, minLength=1)}, None, ["name", "value"]), None, maxItems=16,
                             **{"x-kubernetes-list-map-keys": ["name"], "x-kubernetes-list-type": "map"}),
                  "remove": strs(None, maxItems=16, **{"x-kubernetes-list-type": "set"})},
                 "Modifies request or response headers.")
BACKEND_OBJ_REF = {"group": dict(GW_GROUP, default=""), "kind": dict(GW_KIND, default="Service"), "name": GW_NAME, "namespace": GW_NS, "port": GW_PORT}
MIRROR = obj({"backendRef": obj(BACKEND_OBJ_REF, "BackendRef references a resource where mirrored requests are sent.", ["name"]),
              "percent": i32("Percent represents the percentage of requests that should be mirrored.", minimum=0, maximum=100),
              "fraction": obj({"numerator": i32(None, minimum=0), "denominator": i32(None, minimum=1, default=100)}, None, ["numerator"])},
             "Mirrors requests to another backend.", ["backendRef"])
EXT_REF = obj({"group": GW_GROUP, "kind": GW_KIND, "name": GW_NAME}, "An implementation-specific extension to the filter.", ["group", "kind", "name"])
PATH_MODIFIER = obj({"type": enum(["ReplaceFullPath", "ReplacePrefixMatch"]), "replaceFullPath": s(None, maxLength=1024), "replacePrefixMatch": s(None, maxLength=1024)},
                    "Defines a path rewrite or redirect.", ["type"])
HTTP_FILTER = obj({
    "type": enum(["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "RequestRedirect", "URLRewrite", "ExtensionRef", "CORS"], "Type identifies the type of filter to apply."),
    "requestHeaderModifier": HEADER_MOD,
    "responseHeaderModifier": HEADER_MOD,
    "requestMirror": MIRROR,
    "requestRedirect": obj({"scheme": enum(["http", "https"]), "hostname": GW_HOSTNAME, "path": PATH_MODIFIER, "port": GW_PORT,
                            "statusCode": {"type": "integer", "enum": [301, 302, 303, 307, 308], "default": 302}}, "Defines a schema for a filter that responds to the request with an HTTP redirection."),
    "urlRewrite": obj({"hostname": GW_HOSTNAME, "path": PATH_MODIFIER}, "Defines a schema for a filter that modifies a request during forwarding."),
    "cors": obj({"allowOrigins": strs(None, maxItems=64), "allowCredentials": b(), "allowMethods": strs(None, maxItems=9), "allowHeaders": strs(None, maxItems=64),
                 "exposeHeaders": strs(None, maxItems=64), "maxAge": i32(None, minimum=1, default=5)}, "CORS defines a schema for a filter that responds to the cross-origin request based on HTTP response header."),
    "extensionRef": EXT_REF,
}, "Defines processing steps that must be completed during the request or response lifecycle.", ["type"])
GRPC_FILTER = obj({
    "type": enum(["ResponseHeaderModifier", "RequestHeaderModifier", "RequestMirror", "ExtensionRef"], "Type identifies the type of filter to apply."),
    "requestHeaderModifier": HEADER_MOD, "responseHeaderModifier": HEADER_MOD, "requestMirror": MIRROR, "extensionRef": EXT_REF,
}, "Defines processing steps that must be completed during the request or response lifecycle.", ["type"])


def backend_refs(filters):
    return arr(obj(dict(BACKEND_OBJ_REF, weight=i32("Weight specifies the proportion of requests forwarded to the referenced backend.", minimum=0, maximum=1000000, default=1),
                        filters=arr(filters, None, maxItems=16)), None, ["name"]),
               "BackendRefs defines the backend(s) where matching requests should be sent.", maxItems=16)


HEADER_MATCH = obj({"type": enum(["Exact", "RegularExpression"]), "name": HEADER_NAME, "value": s(None, maxLength=4096, minLength=1)}, None, ["name", "value"])
HTTP_ROUTE_SPEC = obj({
    "parentRefs": arr(PARENT_REF, "ParentRefs references the resources (usually Gateways, or Services for mesh routes) that a Route wants to be attached to.", maxItems=32),
    "hostnames": arr(GW_HOSTNAME, "Hostnames defines a set of hostnames that should match against the HTTP Host header.", maxItems=16),
    "rules": arr(obj({
        "name": GW_SECTION,
        "matches": arr(obj({
            "path": obj({"type": enum(["Exact", "PathPrefix", "RegularExpression"]), "value": s(None, maxLength=1024)}, "Path specifies a HTTP request path matcher."),
            "headers": arr(HEADER_MATCH, None, maxItems=16),
            "queryParams": arr(obj({"type": enum(["Exact", "RegularExpression"]), "name": s(None, maxLength=256, minLength=1), "value": s(None, maxLength=1024, minLength=1)}, None, ["name", "value"]), None, maxItems=16),
            "method": enum(["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]),
        }), "Matches define conditions used for matching the rule against incoming HTTP requests.", maxItems=64),
        "filters": arr(HTTP_FILTER, None, maxItems=16),
        "backendRefs": backend_refs(HTTP_FILTER),
        "timeouts": obj({"request": s("Request specifies the maximum duration for a gateway to respond to an HTTP request.", pattern="^([0-9]{1,5}(h|m|s|ms)){1,4}$"),
                         "backendRequest": s("BackendRequest specifies a timeout for an individual request from the gateway to a backend.", pattern="^([0-9]{1,5}(h|m|s|ms)){1,4}$")},
                        "Timeouts defines the timeouts that can be configured for an HTTP request."),
        "retry": obj({"codes": arr({"type": "integer", "minimum": 400, "maximum": 599}), "attempts": {"type": "integer"},
                      "backoff": s(None, pattern="^([0-9]{1,5}(h|m|s|ms)){1,4}$")}, "Retry defines the configuration for when to retry an HTTP request (experimental channel)."),
    }), "Rules are a list of HTTP matchers, filters and actions.", maxItems=16),
}, "Spec defines the desired state of HTTPRoute.")
GRPC_ROUTE_SPEC = obj({
    "parentRefs": HTTP_ROUTE_SPEC["properties"]["parentRefs"],
    "hostnames": HTTP_ROUTE_SPEC["properties"]["hostnames"],
    "rules": arr(obj({
        "name": GW_SECTION,
        "matches": arr(obj({"method": obj({"type": enum(["Exact", "RegularExpression"]), "service": s(None, maxLength=1024), "method": s(None, maxLength=1024)}),
                            "headers": arr(HEADER_MATCH, None, maxItems=16)}), None, maxItems=64),
        "filters": arr(GRPC_FILTER, None, maxItems=16),
        "backendRefs": backend_refs(GRPC_FILTER),
    }), "Rules are a list of GRPC matchers, filters and actions.", maxItems=16),
}, "Spec defines the desired state of GRPCRoute.")
LISTENER = obj({
    "name": GW_SECTION, "hostname": GW_HOSTNAME, "port": GW_PORT,
    "protocol": s("Protocol specifies the network protocol this listener expects to receive (HTTP, HTTPS, TLS, TCP, UDP, or an implementation-specific one such as HBONE).",
                  maxLength=255, minLength=1, pattern="^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\\/[A-Za-z0-9]+$"),
    "tls": obj({"mode": enum(["Terminate", "Passthrough"]), "certificateRefs": arr(obj({"group": GW_GROUP, "kind": GW_KIND, "name": GW_NAME, "namespace": GW_NS}, None, ["name"]), None, maxItems=64),
                "options": smap(s(None, maxLength=4096), maxProperties=16)}, "TLS is the TLS configuration for the Listener."),
    "allowedRoutes": obj({"namespaces": obj({"from": enum(["All", "Selector", "Same"]), "selector": obj({
        "matchLabels": smap(), "matchExpressions": arr(obj({"key": s(), "operator": s(), "values": strs()}, None, ["key", "operator"]))})}),
        "kinds": arr(obj({"group": GW_GROUP, "kind": GW_KIND}, None, ["kind"]), None, maxItems=8)}, "AllowedRoutes defines the types of routes that MAY be attached to a Listener."),
}, None, ["name", "port", "protocol"])
GATEWAY_SPEC = obj({
    "gatewayClassName": s("GatewayClassName used for this Gateway (istio-waypoint for a waypoint).", maxLength=253, minLength=1),
    "listeners": arr(LISTENER, "Listeners associated with this Gateway.", maxItems=64, minItems=1,
                     **{"x-kubernetes-list-map-keys": ["name"], "x-kubernetes-list-type": "map"}),
    "addresses": arr(obj({"type": s(None, maxLength=253, minLength=1, default="IPAddress"), "value": s(None, maxLength=253)}), None, maxItems=16),
    "infrastructure": obj({"labels": smap(maxProperties=8), "annotations": smap(maxProperties=8),
                           "parametersRef": obj({"group": GW_GROUP, "kind": GW_KIND, "name": GW_NAME}, None, ["group", "kind", "name"])},
                          "Infrastructure defines infrastructure level attributes about this Gateway instance."),
}, "Spec defines the desired state of Gateway.", ["gatewayClassName", "listeners"])
GATEWAY_STATUS = obj({
    "addresses": arr(obj({"type": s(), "value": s(None, maxLength=253)}, None, ["value"]), None, maxItems=16),
    "conditions": CONDITIONS,
    "listeners": arr(obj({"name": GW_SECTION, "supportedKinds": arr(obj({"group": GW_GROUP, "kind": GW_KIND}, None, ["kind"]), None, maxItems=8),
                          "attachedRoutes": i32(), "conditions": CONDITIONS}, None, ["attachedRoutes", "conditions", "name", "supportedKinds"]), None, maxItems=64),
}, "Status defines the current state of Gateway.")
GATEWAYCLASS_SPEC = obj({
    "controllerName": s("ControllerName is the name of the controller that is managing Gateways of this class (istio.io/gateway-controller for istio-waypoint).",
                        maxLength=253, minLength=1, pattern="^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\\/[A-Za-z0-9\\/\\-._~%!$&'()*+,;=:]+$"),
    "parametersRef": obj({"group": GW_GROUP, "kind": GW_KIND, "name": GW_NAME, "namespace": GW_NS}, None, ["group", "kind", "name"]),
    "description": s(None, maxLength=64),
}, "Spec defines the desired state of GatewayClass.", ["controllerName"])
GATEWAYCLASS_STATUS = obj({"conditions": CONDITIONS}, "Status defines the current state of GatewayClass.")


def gw_crd(kind, plural, short, scope, spec, status, versions, columns):
    def version(name, storage):
        return {"name": name, "served": True, "storage": storage, "subresources": {"status": {}},
                "additionalPrinterColumns": columns + [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
                "schema": {"openAPIV3Schema": {"type": "object", "description": f"{kind} (Gateway API, gateway.networking.k8s.io).",
                                               "properties": {"spec": spec, "status": status}, "required": ["spec"]}}}
    names = {"categories": ["gateway-api"], "kind": kind, "listKind": kind + "List", "plural": plural, "singular": kind.lower()}
    if short:
        names["shortNames"] = short
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.gateway.networking.k8s.io", "annotations": {"helm.sh/resource-policy": "keep"}},
            "spec": {"group": "gateway.networking.k8s.io", "names": names, "scope": scope,
                     "versions": [version(v, i == 0) for i, v in enumerate(versions)]}}


class NoAliases(yaml.SafeDumper):
    """Shared building blocks are written out in full (no YAML anchors) in every place."""

    def ignore_aliases(self, data):
        return True


def render():
    istio = [
        istio_crd("security.istio.io", "AuthorizationPolicy", "authorizationpolicies", ["ap"], AUTHORIZATION_POLICY,
                  [{"name": "Action", "type": "string", "jsonPath": ".spec.action", "description": "The operation to take."}], "security-istio-io"),
        istio_crd("security.istio.io", "PeerAuthentication", "peerauthentications", ["pa"], PEER_AUTHENTICATION,
                  [{"name": "Mode", "type": "string", "jsonPath": ".spec.mtls.mode", "description": "Defines the mTLS mode used for peer authentication."}], "security-istio-io"),
        istio_crd("security.istio.io", "RequestAuthentication", "requestauthentications", ["ra"], REQUEST_AUTHENTICATION, [], "security-istio-io"),
        istio_crd("networking.istio.io", "DestinationRule", "destinationrules", ["dr"], DESTINATION_RULE,
                  [{"name": "Host", "type": "string", "jsonPath": ".spec.host", "description": "The name of a service from the service registry"}], "networking-istio-io"),
        istio_crd("networking.istio.io", "VirtualService", "virtualservices", ["vs"], VIRTUAL_SERVICE,
                  [{"name": "Gateways", "type": "string", "jsonPath": ".spec.gateways", "description": "The names of gateways and sidecars that should apply these routes"},
                   {"name": "Hosts", "type": "string", "jsonPath": ".spec.hosts", "description": "The destination hosts to which traffic is being sent"}], "networking-istio-io"),
    ]
    gw = [
        gw_crd("GatewayClass", "gatewayclasses", ["gc"], "Cluster", GATEWAYCLASS_SPEC, GATEWAYCLASS_STATUS, ["v1", "v1beta1"],
               [{"name": "Controller", "type": "string", "jsonPath": ".spec.controllerName"},
                {"name": "Accepted", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status"}]),
        gw_crd("Gateway", "gateways", ["gtw"], "Namespaced", GATEWAY_SPEC, GATEWAY_STATUS, ["v1", "v1beta1"],
               [{"name": "Class", "type": "string", "jsonPath": ".spec.gatewayClassName"},
                {"name": "Address", "type": "string", "jsonPath": ".status.addresses[*].value"},
                {"name": "Programmed", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Programmed\")].status"}]),
        gw_crd("HTTPRoute", "httproutes", [], "Namespaced", HTTP_ROUTE_SPEC, ROUTE_STATUS, ["v1", "v1beta1"],
               [{"name": "Hostnames", "type": "string", "jsonPath": ".spec.hostnames"}]),
        gw_crd("GRPCRoute", "grpcroutes", [], "Namespaced", GRPC_ROUTE_SPEC, ROUTE_STATUS, ["v1"],
               [{"name": "Hostnames", "type": "string", "jsonPath": ".spec.hostnames"}]),
    ]
    header = ("# Generated by deploy/helm/crdgen.py; edit that script, not this file.\n"
              "# Annotated helm.sh/resource-policy: keep, so `helm uninstall` leaves users' objects alone.\n")

    def dump(docs, value):
        body = "---\n".join(yaml.dump(d, Dumper=NoAliases, sort_keys=False, width=1000) for d in docs)
        return "{{- if .Values.base.%s }}\n%s%s{{- end }}\n" % (value, header, body)

    return {
        "crds-istio.yaml": dump(istio, "enableCRDTemplates"),
        "crds-gateway-api.yaml": dump(gw, "enableGatewayAPICRDs"),
    }


def main():
    check = "--check" in sys.argv[1:]
    bad = 0
    for name, text in render().items():
        path = os.path.join(OUT, name)
        if check:
            cur = open(path).read() if os.path.exists(path) else None
            if cur != text:
                print(f"crdgen: {path} differs from deploy/helm/crdgen.py (run python3 deploy/helm/crdgen.py)")
                bad = 1
        else:
            with open(path, "w") as f:
                f.write(text)
            print(f"wrote {path}")
    return bad


if __name__ == "__main__":
    sys.exit(main())
