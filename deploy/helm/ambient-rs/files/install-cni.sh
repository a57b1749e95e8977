#!/bin/sh
# Installs ambient-cni on a node and chains it into the node's CNI configuration; removes both.
# Shipped in the ztunnel image (/usr/local/bin/install-cni.sh) and in the chart's ConfigMap
# <release>-cni-install; the ztunnel DaemonSet runs it as its `install-cni` sidecar with `watch`.
#
#   install-cni.sh install   [options]  copy the binary, chain the plugin, exit
#   install-cni.sh uninstall [options]  unchain the plugin from every conflist, delete the binary
#   install-cni.sh watch     [options]  install, then re-install whenever the runtime's conflist
#                                       is rewritten (the primary CNI may rewrite it); on
#                                       SIGTERM/SIGINT uninstall and exit
# options:
#   --bin-dir DIR       host CNI binary dir, as mounted       (default /host/opt/cni/bin)
#   --conf-dir DIR      host CNI config dir, as mounted       (default /host/etc/cni/net.d)
#   --conf-file NAME    conflist to chain into; empty = the first *.conflist/*.conf by name,
#                       which is the one the container runtime uses
#   --source PATH       the ambient-cni binary to install     (default /usr/local/bin/ambient-cni)
#   --socket PATH       ztunnel's enrollment socket (ambient-cni `ztunnel_socket`)
#                                                             (default /var/run/ambient-rs/cni.sock)
#   --log-level LEVEL   ambient-cni `log_level`               (default info)
#   --dns-capture BOOL  ambient-cni `dns_capture`             (default false)
#   --interval SECONDS  watch: how often to check             (default 5)
# Needs jq. Every write goes to a temporary file in the same directory, then rename: the runtime
# never reads a half-written file. A single-plugin *.conf is converted to a *.conflist (as
# istio-cni does) so the plugin can be chained; uninstall leaves the *.conflist form in place.
set -eu

PLUGIN=ambient-cni
bin_dir=/host/opt/cni/bin
conf_dir=/host/etc/cni/net.d
conf_file=
source_bin=/usr/local/bin/ambient-cni
socket=/var/run/ambient-rs/cni.sock
log_level=info
dns_capture=false
interval=5

log() { echo "install-cni: $*" >&2; }
die() { log "$*"; exit 1; }

cmd="${1:-}"
[ $# -gt 0 ] && shift
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || die "option $1 needs a value"
    case "$1" in
        --bin-dir) bin_dir="$2" ;;
        --conf-dir) conf_dir="$2" ;;
        --conf-file) conf_file="$2" ;;
        --source) source_bin="$2" ;;
        --socket) socket="$2" ;;
        --log-level) log_level="$2" ;;
        --dns-capture) dns_capture="$2" ;;
        --interval) interval="$2" ;;
        *) die "unknown option $1 (see the header of this script)" ;;
    esac
    shift 2
done
case "$dns_capture" in true|false) ;; *) die "--dns-capture must be true or false, not $dns_capture" ;; esac
command -v jq >/dev/null 2>&1 || die "jq not found (the ztunnel image installs it)"

# The conflist the runtime uses: --conf-file, else the first *.conflist or *.conf by name.
primary_conf() {
    if [ -n "$conf_file" ]; then
        [ -f "$conf_dir/$conf_file" ] && echo "$conf_dir/$conf_file"
        return 0
    fi
    for f in $(ls -1 "$conf_dir" 2>/dev/null | LC_ALL=C sort); do
        case "$f" in
            *.conflist|*.conf) [ -f "$conf_dir/$f" ] && { echo "$conf_dir/$f"; return 0; } ;;
        esac
    done
    return 0
}

plugin_entry() {
    jq -n --arg s "$socket" --arg l "$log_level" --argjson d "$dns_capture" \
        '{type: "ambient-cni", ztunnel_socket: $s, log_level: $l, dns_capture: $d}'
}

write_atomic() { # FILE: stdin -> FILE via a temporary file in the same directory
    tmp="$(dirname "$1")/.$(basename "$1").ambient-rs.tmp"
    cat >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$1"
}

install_binary() {
    [ -x "$source_bin" ] || die "$source_bin is missing or not executable"
    mkdir -p "$bin_dir"
    if ! cmp -s "$source_bin" "$bin_dir/$PLUGIN" 2>/dev/null; then
        cp "$source_bin" "$bin_dir/.$PLUGIN.tmp"
        chmod 0755 "$bin_dir/.$PLUGIN.tmp"
        mv -f "$bin_dir/.$PLUGIN.tmp" "$bin_dir/$PLUGIN"
        log "installed $bin_dir/$PLUGIN"
    fi
}

# Prints "chained" when FILE already has exactly our entry last, else nothing.
is_chained() {
    entry="$(plugin_entry)"
    jq -e --argjson e "$entry" '(.plugins // []) | (map(select(.type == "ambient-cni")) | length) == 1
        and .[-1] == $e' "$1" >/dev/null 2>&1 && echo chained || true
}

chain() {
    conf="$(primary_conf)"
    [ -n "$conf" ] || { log "no CNI config in $conf_dir yet (is the cluster's network plugin installed?)"; return 1; }
    jq -e . "$conf" >/dev/null 2>&1 || { log "$conf is not valid JSON; not touching it"; return 1; }
    case "$conf" in
        *.conf)
            # A single-plugin config: wrap it into a conflist next to it, then drop the .conf.
            list="${conf%.conf}.conflist"
            jq --argjson e "$(plugin_entry)" \
                '{cniVersion: .cniVersion, name: .name, plugins: [del(.cniVersion, .name), $e]}' \
                "$conf" | write_atomic "$list"
            rm -f "$conf"
            log "converted $conf to $list and chained $PLUGIN"
            return 0 ;;
    esac
    [ "$(is_chained "$conf")" = chained ] && return 0
    jq --argjson e "$(plugin_entry)" \
        '.plugins = ((.plugins // []) | map(select(.type != "ambient-cni"))) + [$e]' "$conf" \
        | write_atomic "$conf"
    log "chained $PLUGIN into $conf"
}

unchain_all() {
    for f in "$conf_dir"/*.conflist; do
        [ -f "$f" ] || continue
        if jq -e '(.plugins // []) | any(.type == "ambient-cni")' "$f" >/dev/null 2>&1; then
            jq '.plugins |= map(select(.type != "ambient-cni"))' "$f" | write_atomic "$f"
            log "removed $PLUGIN from $f"
        fi
    done
}

uninstall() {
    unchain_all
    if [ -e "$bin_dir/$PLUGIN" ]; then
        rm -f "$bin_dir/$PLUGIN"
        log "deleted $bin_dir/$PLUGIN"
    fi
}

case "$cmd" in
    install)
        install_binary
        chain ;;
    uninstall)
        uninstall ;;
    watch)
        install_binary
        stop=0
        trap 'stop=1' TERM INT
        until chain; do
            [ "$stop" = 1 ] && break
            sleep "$interval" & wait $! || true
        done
        log "watching $conf_dir every ${interval}s"
        while [ "$stop" = 0 ]; do
            sleep "$interval" & wait $! || true
            [ "$stop" = 1 ] && break
            install_binary
            chain || true
        done
        log "stopping: removing $PLUGIN from this node"
        uninstall ;;
    *)
        die "usage: install-cni.sh install|uninstall|watch [options] (see the header of this script)" ;;
esac
