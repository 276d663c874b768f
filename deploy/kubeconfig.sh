#!/bin/sh
# Writes the kubeconfig fluxgate uses: the fluxgate ServiceAccount's long-lived token (from the
# Secret in deploy/token-secret.yaml), the cluster CA that came with it, and the API server URL
# of your current admin context. Run it after `kubectl apply -k deploy/`, as someone who may
# read that Secret.
#
#   deploy/kubeconfig.sh [--output FILE] [--server URL] [--context NAME]
#                        [--namespace NS] [--secret NAME] [--wait SECONDS]
#
# Uses only kubectl (the one in $KUBECTL if set), base64, sed and mktemp. The token is never
# printed; the file is written with mode 600, atomically.

set -eu

prog=${0##*/}
namespace=flux-system
secret=fluxgate-token
output=./fluxgate.kubeconfig
context=
server=
wait_s=30
kubectl_bin=${KUBECTL:-kubectl}

usage() {
	cat <<EOF
usage: $prog [options]

Writes a kubeconfig for the fluxgate ServiceAccount from its token Secret, using your current
kubectl context to read it. Apply the Secret first: kubectl apply -k deploy/

  --output FILE     where to write it (default ./fluxgate.kubeconfig; mode 600)
  --server URL      the API server URL fluxgate should use (default: the admin context's;
                    set it when that address is not reachable from fluxgate's host)
  --context NAME    the admin kubectl context to read the Secret with (default: current)
  --namespace NS    the Secret's namespace (default flux-system)
  --secret NAME     the token Secret (default fluxgate-token)
  --wait SECONDS    how long to wait for the token controller to fill the Secret (default 30)
  -h, --help        this help

Environment: KUBECTL (the kubectl binary, default kubectl), KUBECONFIG (the admin kubeconfig).
EOF
}

die() {
	printf '%s: %s\n' "$prog" "$*" >&2
	exit 1
}

# The value of an option given as "--opt VALUE" or "--opt=VALUE".
need_value() {
	[ "$#" -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"
}

while [ "$#" -gt 0 ]; do
	case $1 in
	--namespace | --secret | --output | --context | --server | --wait)
		need_value "$@"
		opt=$1 val=$2
		shift 2
		;;
	--namespace=* | --secret=* | --output=* | --context=* | --server=* | --wait=*)
		opt=${1%%=*} val=${1#*=}
		shift
		need_value "$opt" "$val"
		;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		usage >&2
		die "unknown argument: $1"
		;;
	esac
	case $opt in
	--namespace) namespace=$val ;;
	--secret) secret=$val ;;
	--output) output=$val ;;
	--context) context=$val ;;
	--server) server=$val ;;
	--wait) wait_s=$val ;;
	esac
done

case $wait_s in
'' | *[!0-9]*) die "--wait needs a whole number of seconds, not '$wait_s'" ;;
esac

command -v "$kubectl_bin" >/dev/null 2>&1 ||
	die "kubectl not found (tried '$kubectl_bin'); install it or set KUBECTL"

# kubectl against the admin context.
k() {
	if [ -n "$context" ]; then
		"$kubectl_bin" --context "$context" "$@"
	else
		"$kubectl_bin" "$@"
	fi
}

# The API server URL: the admin context's unless --server says otherwise.
if [ -z "$server" ]; then
	server=$(k config view --minify --raw -o 'jsonpath={.clusters[0].cluster.server}') ||
		die "cannot read the API server URL from the admin kubectl context${context:+ '$context'}; pass --context or --server"
	[ -n "$server" ] ||
		die "the admin kubectl context${context:+ '$context'} names no API server; pass --server URL"
fi
case $server in
https://?*) ;;
*) die "the API server URL must start with https:// (got '$server'); pass --server URL" ;;
esac

# Wait for the token controller to fill the Secret: type, token and ca.crt, base64 as stored.
# A missing Secret reads as empty too (it may have been applied a moment ago); any other
# error (unreachable, forbidden) stops at once with kubectl's message.
i=0
while :; do
	fields=$(k --request-timeout=10s -n "$namespace" get secret "$secret" --ignore-not-found \
		-o 'jsonpath={.type}{" "}{.data.token}{" "}{.data.ca\.crt}') ||
		die "cannot read Secret $namespace/$secret with the admin context${context:+ '$context'} (kubectl's error above)"
	set -f
	# shellcheck disable=SC2086 # split the three space-separated fields
	set -- $fields
	set +f
	type=${1-} token_b64=${2-} ca_b64=${3-}
	if [ -n "$type" ] && [ "$type" != kubernetes.io/service-account-token ]; then
		die "Secret $namespace/$secret has type '$type', not kubernetes.io/service-account-token; apply deploy/token-secret.yaml"
	fi
	[ -n "$token_b64" ] && [ -n "$ca_b64" ] && break
	if [ "$i" -ge "$wait_s" ]; then
		if [ -z "$type" ]; then
			die "Secret $namespace/$secret not found after ${wait_s}s; create it first: kubectl apply -k deploy/"
		fi
		die "Secret $namespace/$secret still has no token and ca.crt after ${wait_s}s: the token controller has not filled it. Check that its ServiceAccount exists (kubectl -n $namespace get serviceaccount fluxgate) and that the Secret's annotation kubernetes.io/service-account.name names it; if the account was created after the Secret, delete the Secret and apply again"
	fi
	[ "$i" -eq 0 ] && printf '%s: waiting up to %ss for the token controller to fill Secret %s/%s\n' \
		"$prog" "$wait_s" "$namespace" "$secret" >&2
	sleep 1
	i=$((i + 1))
done

token=$(printf '%s' "$token_b64" | base64 -d) ||
	die "Secret $namespace/$secret: data.token is not valid base64"
[ -n "$token" ] || die "Secret $namespace/$secret: data.token is empty"
case $token in
*[!A-Za-z0-9._~+/=-]*) die "Secret $namespace/$secret: data.token is not a bearer token (RFC 6750 characters only)" ;;
esac
# Only the format is checked here; the API server checks the certificate when fluxgate connects.
printf '%s' "$ca_b64" | base64 -d >/dev/null 2>&1 ||
	die "Secret $namespace/$secret: data.ca.crt is not valid base64"

# YAML single-quoted scalars: only ' needs escaping (as '').
quote() {
	printf "'%s'" "$(printf '%s' "$1" | sed "s/'/''/g")"
}

# Written next to the destination and renamed over it, so fluxgate never reads half a file
# and the file is mode 600 from its first byte (mktemp creates it so).
case $output in
*/*) outdir=${output%/*} ;;
*) outdir=. ;;
esac
[ -n "$outdir" ] || outdir=/
[ -d "$outdir" ] || die "directory $outdir does not exist (for --output $output)"
tmp=$(mktemp "$outdir/.fluxgate.kubeconfig.XXXXXX") || die "cannot create a file in $outdir"
trap 'rm -f "$tmp"' EXIT
trap 'exit 1' HUP INT TERM
chmod 600 "$tmp"

cat >"$tmp" <<EOF
# fluxgate's kubeconfig: ServiceAccount $namespace/fluxgate, token from Secret
# $namespace/$secret (written by deploy/kubeconfig.sh). Keep it secret.
apiVersion: v1
kind: Config
clusters:
  - name: fluxgate
    cluster:
      server: $(quote "$server")
      certificate-authority-data: $ca_b64
users:
  - name: fluxgate
    user:
      token: $(quote "$token")
contexts:
  - name: fluxgate
    context:
      cluster: fluxgate
      user: fluxgate
      namespace: $(quote "$namespace")
current-context: fluxgate
preferences: {}
EOF

mv -f "$tmp" "$output" || die "cannot write $output"
trap - EXIT
chmod 600 "$output"

abs=$(cd "$outdir" && pwd -P)/${output##*/} || abs=$output
cat <<EOF
Wrote $abs (mode 600): ServiceAccount $namespace/fluxgate at $server.
Next: set it in fluxgate's configuration,
  [kubernetes]
  kubeconfig = "$abs"
then run
  fluxgate check --config /etc/fluxgate/fluxgate.toml
which asks the API server whether this account may patch each receiver's targets.
EOF
