#!/bin/sh
# Makes the test-only CA and the localhost certificate it signs (ECDSA P-256,
# valid for 100 years) used by the https tests. Run from this directory;
# commit the .pem files. The keys are public test material: never trust them.
set -eu
openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout ca.key.pem -out ca.pem -days 36500 -subj "/CN=swarm-agents test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout localhost.key.pem -out localhost.csr -subj "/CN=localhost"
printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" > localhost.ext
openssl x509 -req -in localhost.csr -CA ca.pem -CAkey ca.key.pem -CAcreateserial \
    -out localhost.pem -days 36500 -extfile localhost.ext
# The server presents the chain leaf + CA; the CA key is not needed any more.
rm -f localhost.csr localhost.ext ca.srl ca.key.pem
