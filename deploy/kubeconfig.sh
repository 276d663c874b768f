#!/bin/sh
# Writes the kubeconfig fluxgate uses: the fluxgate ServiceAccount's long-lived token (from the
# Secret in deploy/token-secret.yaml), the cluster CA that came with it, and the API server URL
# of your current admin context. Run it after `kubectl apply -k deploy/`, as someone who may
# read that Secret.
#
#   deploy/kubeconfig.sh [--output FILE] [--server URL] [--context NAME]
#                        [--namespace NS] [--secret NAME] [--wait SECONDS]
#
# For a fleet, one kubeconfig per cluster, each with that cluster's own token and CA:
#
#   deploy/kubeconfig.sh --output-dir DIR --context A --context B ...   # DIR/A.kubeconfig, ...
#   deploy/kubeconfig.sh --output-dir DIR --all-contexts                # every admin context
#
# Uses only kubectl (the one in $KUBECTL if set), base64, sed, tr, cut, grep and mktemp. The
# token is never printed; each file is written with mode 600, atomically.

set -eu

prog=${0##*/}
namespace=flux-system
secret=fluxgate-token
output=
output_dir=
# The --context values, one a line (a context name may hold spaces, never a line break).
contexts=
all_contexts=
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
  --context NAME    the admin kubectl context to read the Secret with (default: current);
                    repeat it for several clusters, one kubeconfig each (see --output-dir)
  --all-contexts    one kubeconfig for every context of the admin kubeconfig
  --output-dir DIR  with several contexts: write DIR/<context>.kubeconfig for each (default .;
                    created mode 700 if missing). A context that fails does not stop the
                    others; the script names it and exits 1 at the end
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

nl='
'

# Whether $2 is one of the lines of $1.
listed() {
	case "$nl$1" in *"$nl$2$nl"*) return 0 ;; esac
	return 1
}

# The value of an option given as "--opt VALUE" or "--opt=VALUE".
need_value() {
	[ "$#" -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)"
}

while [ "$#" -gt 0 ]; do
	case $1 in
	--namespace | --secret | --output | --output-dir | --context | --server | --wait)
		need_value "$@"
		opt=$1 val=$2
		shift 2
		;;
	--namespace=* | --secret=* | --output=* | --output-dir=* | --context=* | --server=* | --wait=*)
		opt=${1%%=*} val=${1#*=}
		shift
		need_value "$opt" "$val"
		;;
	--all-contexts)
		all_contexts=1
		shift
		continue
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
	--output-dir) output_dir=$val ;;
	--context)
		case $val in *"$nl"*) die "--context: a context name has no line break" ;; esac
		! listed "$contexts" "$val" || die "--context $val is given twice"
		contexts=$contexts$val$nl
		;;
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

# Writes $output for the admin context $context (empty: the current one) and the API server
# $server (empty: the context's), then says so. Stops the script (or, in the per-context mode,
# the subshell it runs in) at the first problem, with the reason.
write_kubeconfig() {
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
	printf 'Wrote %s (mode 600): ServiceAccount %s/fluxgate at %s%s.\n' \
		"$abs" "$namespace" "$server" "${context:+, from context '$context'}"
}

# The file name for a context: the name itself, with any character a file name should not
# hold (an EKS context is an ARN with ':' and '/') replaced by '_'.
file_for() {
	f=$(printf '%s' "$1" | tr -c 'A-Za-z0-9._-' '_')
	case $f in .*) f=_$f ;; esac
	printf '%s.kubeconfig' "$f"
}

# A suggested fluxgate cluster name for a context: a DNS label (lower case, digits, '-').
cluster_name_for() {
	n=$(printf '%s' "$1" | tr 'A-Z' 'a-z' | tr -c 'a-z0-9' '-' | tr -s '-' | cut -c1-63 |
		sed 's/^-*//; s/-*$//')
	printf '%s' "${n:-cluster}"
}

n_contexts=$(printf '%s' "$contexts" | grep -c '' || true)

# One cluster, as it has always been: one file, --output.
if [ -z "$all_contexts" ] && [ -z "$output_dir" ] && [ "$n_contexts" -le 1 ]; then
	context=${contexts%"$nl"}
	output=${output:-./fluxgate.kubeconfig}
	write_kubeconfig
	cat <<EOF
Next: set it in fluxgate's configuration,
  [kubernetes]
  kubeconfig = "$abs"
then run
  fluxgate check --config /etc/fluxgate/fluxgate.toml
which asks the API server whether this account may patch each receiver's targets.
EOF
	exit 0
fi

# A fleet: one kubeconfig per admin context, each from that cluster's own Secret.
[ -z "$output" ] ||
	die "--output names one file; with several contexts use --output-dir DIR (DIR/<context>.kubeconfig each)"
if [ -n "$all_contexts" ]; then
	[ -z "$contexts" ] || die "--all-contexts and --context exclude each other"
	contexts=$("$kubectl_bin" config get-contexts -o name) ||
		die "cannot list the contexts of the admin kubeconfig (kubectl's error above)"
	[ -n "$contexts" ] || die "the admin kubeconfig has no contexts (KUBECONFIG=${KUBECONFIG:-~/.kube/config})"
	contexts=$contexts$nl
fi
if [ -n "$server" ] && { [ -n "$all_contexts" ] || [ "$n_contexts" -gt 1 ]; }; then
	die "--server is one cluster's address; with several contexts each context's own is used (to override one, run the script for that context alone with --context and --server)"
fi
output_dir=${output_dir:-.}
if [ ! -d "$output_dir" ]; then
	(umask 077 && mkdir -p "$output_dir") || die "cannot create directory $output_dir (for --output-dir)"
fi
dir_abs=$(cd "$output_dir" && pwd -P) || die "cannot enter directory $output_dir (for --output-dir)"

# Two contexts must not share a file, nor a suggested cluster name.
files= names=
while IFS= read -r ctx; do
	[ -n "$ctx" ] || continue
	f=$(file_for "$ctx")
	! listed "$files" "$f" ||
		die "two contexts give the same file name $f; rename one (kubectl config rename-context) or run the script for each with --output"
	files=$files$f$nl
done <<EOF
$contexts
EOF

written= failed=
while IFS= read -r ctx <&3; do
	[ -n "$ctx" ] || continue
	f=$(file_for "$ctx")
	# A subshell per context: a problem in one cluster stops only its own file.
	set +e
	(
		set -e
		prog="$prog: context $ctx"
		context=$ctx
		output=$dir_abs/$f
		write_kubeconfig
	)
	rc=$?
	set -e
	if [ "$rc" -eq 0 ]; then
		written=$written$ctx$nl
	else
		failed=${failed:+$failed, }$ctx
	fi
done 3<<EOF
$contexts
EOF

if [ -n "$written" ]; then
	echo "Next: one [[clusters]] table each in fluxgate's configuration (the names are suggestions:"
	echo "any DNS label; labels are yours to choose, for cluster_selector),"
	while IFS= read -r ctx; do
		[ -n "$ctx" ] || continue
		name=$(cluster_name_for "$ctx")
		if listed "$names" "$name"; then
			i=2
			while listed "$names" "$name-$i"; do i=$((i + 1)); done
			name=$name-$i
		fi
		names=$names$name$nl
		cat <<EOF
  [[clusters]]
  name = "$name"
  kubeconfig = "$dir_abs/$(file_for "$ctx")"
  labels = { }   # e.g. env = "prod", region = "eu"
EOF
	done <<EOF
$written
EOF
	echo "then run"
	echo "  fluxgate check --config /etc/fluxgate/fluxgate.toml"
	echo "which asks each cluster's API server whether its account may patch the receivers' targets."
fi
if [ -n "$failed" ]; then
	printf '%s: no kubeconfig written for context(s) %s (the reasons are above)\n' "$prog" "$failed" >&2
	exit 1
fi

