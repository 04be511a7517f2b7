#!/usr/bin/env bash
# pki.sh OUT NODE_NAME: the certificates and keys of the test cluster,
# written into the folder OUT with openssl (ECDSA P-256 keys, 10 years).
#
#   ca              signs every certificate below except the front proxy's;
#                   clients presenting one of its certificates are
#                   authenticated by the API server and the kubelet
#   apiserver       serving: 127.0.0.1, localhost, NODE_NAME, and the
#                   names and first ClusterIP of the kubernetes Service
#   admin           O=system:masters (kubectl, the smoke test)
#   controller-manager  CN=system:kube-controller-manager
#   scheduler       CN=system:kube-scheduler
#   kubelet-client  O=system:nodes CN=system:node:NODE_NAME (the Node
#                   authorizer and NodeRestriction know it by that name)
#   kubelet-serving the kubelet's API (127.0.0.1, localhost, NODE_NAME),
#                   checked by the API server with --kubelet-certificate-authority
#   apiserver-kubelet-client  O=system:masters: the API server's calls to
#                   the kubelet (logs, exec) pass the kubelet's webhook
#                   authorization
#   front-proxy-ca, front-proxy-client  the aggregation layer's
#                   --requestheader-* identity; without it the controller
#                   manager and the scheduler log missing CA bundle errors
#   sa.key, sa.pub  RSA pair signing and checking service account tokens
set -euo pipefail
out=$1
node=$2
service_ip=${SERVICE_IP:-10.96.0.1}
mkdir -p "$out"
cd "$out"
umask 077

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null; }

ca() { # ca NAME CN
	key "$1"
	openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days 3650 -sha256 \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,digitalSignature,keyCertSign,cRLSign" \
		-out "$1.crt"
}

cert() { # cert NAME CA SUBJECT USAGE [SAN]
	local name=$1 ca=$2 subj=$3 usage=$4 san=${5:-}
	key "$name"
	{
		echo "basicConstraints=critical,CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=$usage"
		[[ -n $san ]] && echo "subjectAltName=$san"
	} >"$name.ext"
	openssl req -new -key "$name.key" -subj "$subj" |
		openssl x509 -req -CA "$ca.crt" -CAkey "$ca.key" -set_serial "0x$(openssl rand -hex 16)" \
			-days 3650 -sha256 -extfile "$name.ext" -out "$name.crt" 2>/dev/null
	rm -f "$name.ext"
}

ca ca nodeinfra-e2e-ca
ca front-proxy-ca nodeinfra-e2e-front-proxy-ca
cert apiserver ca /CN=kube-apiserver serverAuth \
	"DNS:localhost,DNS:$node,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$service_ip"
cert admin ca /O=system:masters/CN=kubernetes-admin clientAuth
cert controller-manager ca /CN=system:kube-controller-manager clientAuth
cert scheduler ca /CN=system:kube-scheduler clientAuth
cert kubelet-client ca "/O=system:nodes/CN=system:node:$node" clientAuth
cert kubelet-serving ca "/CN=$node" serverAuth "DNS:localhost,DNS:$node,IP:127.0.0.1"
cert apiserver-kubelet-client ca /O=system:masters/CN=kube-apiserver-kubelet-client clientAuth
cert front-proxy-client front-proxy-ca /CN=front-proxy-client clientAuth
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
openssl pkey -in sa.key -pubout -out sa.pub
