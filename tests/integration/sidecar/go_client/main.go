// A second independent client of certagent's sidecar API: grpc-go from Debian
// (golang-google-grpc-dev), with stubs that protoc-gen-go and protoc-gen-go-grpc generate from
// agent/sidecar/proto at build time, built offline (GOPATH mode, GOPROXY=off).
//
// Same command line and output as sidecar_client.py (one JSON object per line, then
// {"end": CODE}), so the C++ test reads both alike. Key material is never printed: only
// SHA-256 digests of it.
//
//	sidecar_client_go SOCKET sds NAME...   StreamSecrets, ACKs every response
//	sidecar_client_go SOCKET svid          FetchX509SVID
//	sidecar_client_go SOCKET bundles       FetchX509Bundles
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"sort"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tlsv3 "certagent.test/pb/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "certagent.test/pb/envoy/service/discovery/v3"
	secretv3 "certagent.test/pb/envoy/service/secret/v3"
	"certagent.test/pb/spiffe/workload"
)

const secretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

func emit(v map[string]interface{}) {
	b, _ := json.Marshal(v) // sorted keys
	fmt.Println(string(b))
}

func digest(b []byte) string {
	d := sha256.Sum256(b)
	return hex.EncodeToString(d[:])
}

// DER of every certificate in a PEM blob, in order.
func pemCerts(b []byte) [][]byte {
	var out [][]byte
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return out
		}
		if block.Type == "CERTIFICATE" {
			out = append(out, block.Bytes)
		}
	}
}

// Splits concatenated DER certificates (each a SEQUENCE with a definite length).
func derCerts(der []byte) [][]byte {
	var out [][]byte
	for i := 0; i+2 <= len(der); {
		if der[i] != 0x30 {
			return out
		}
		length, header := int(der[i+1]), 2
		if der[i+1] >= 0x80 {
			n := int(der[i+1] & 0x7f)
			length = 0
			for k := 0; k < n; k++ {
				length = length<<8 | int(der[i+2+k])
			}
			header = 2 + n
		}
		out = append(out, der[i:i+header+length])
		i += header + length
	}
	return out
}

func describeResponse(r *discoveryv3.DiscoveryResponse) map[string]interface{} {
	resources := []map[string]interface{}{}
	for _, a := range r.Resources {
		d := map[string]interface{}{"type_url": a.TypeUrl}
		if a.TypeUrl == secretType {
			var s tlsv3.Secret
			if err := a.UnmarshalTo(&s); err != nil {
				d = map[string]interface{}{"error": err.Error()}
			} else if t := s.GetTlsCertificate(); t != nil {
				chain := pemCerts(t.GetCertificateChain().GetInlineBytes())
				leaf := ""
				if len(chain) > 0 {
					leaf = digest(chain[0])
				}
				d = map[string]interface{}{"name": s.Name, "kind": "tls", "leaf_sha256": leaf,
					"chain_certs": len(chain),
					"key_sha256":  digest(t.GetPrivateKey().GetInlineBytes())}
			} else if v := s.GetValidationContext(); v != nil {
				d = map[string]interface{}{"name": s.Name, "kind": "trust",
					"trusted_ca_sha256": digest(v.GetTrustedCa().GetInlineBytes())}
			} else {
				d = map[string]interface{}{"name": s.Name, "kind": "other"}
			}
		}
		resources = append(resources, d)
	}
	sort.Slice(resources, func(i, j int) bool {
		a, _ := resources[i]["name"].(string)
		b, _ := resources[j]["name"].(string)
		return a < b
	})
	return map[string]interface{}{"type": "sds", "version": r.VersionInfo, "nonce": r.Nonce,
		"type_url": r.TypeUrl, "resources": resources}
}

func end(err error) int {
	if err == nil {
		emit(map[string]interface{}{"end": "OK"})
		return 0
	}
	s := status.Convert(err)
	emit(map[string]interface{}{"end": codeName(s.Code().String()), "message": s.Message()})
	return 0
}

// grpc-go spells codes in CamelCase ("PermissionDenied"); the tests use the canonical names.
func codeName(camel string) string {
	out := []byte{}
	for i := 0; i < len(camel); i++ {
		c := camel[i]
		if c >= 'A' && c <= 'Z' {
			if i > 0 {
				out = append(out, '_')
			}
			out = append(out, c)
		} else {
			out = append(out, c-'a'+'A')
		}
	}
	return string(out)
}

func streamSecrets(conn *grpc.ClientConn, names []string) int {
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(context.Background())
	if err != nil {
		return end(err)
	}
	request := &discoveryv3.DiscoveryRequest{ResourceNames: names, TypeUrl: secretType}
	if err := stream.Send(request); err != nil {
		return end(err)
	}
	for {
		r, err := stream.Recv()
		if err != nil {
			return end(err)
		}
		emit(describeResponse(r))
		ack := &discoveryv3.DiscoveryRequest{VersionInfo: r.VersionInfo, ResourceNames: names,
			TypeUrl: secretType, ResponseNonce: r.Nonce}
		if err := stream.Send(ack); err != nil {
			return end(err)
		}
	}
}

func workloadContext() context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "workload.spiffe.io", "true")
}

func fetchSvids(conn *grpc.ClientConn) int {
	stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(workloadContext(),
		&workload.X509SVIDRequest{})
	if err != nil {
		return end(err)
	}
	for {
		r, err := stream.Recv()
		if err != nil {
			return end(err)
		}
		svids := []map[string]interface{}{}
		for _, s := range r.Svids {
			chain := derCerts(s.X509Svid)
			leaf := ""
			if len(chain) > 0 {
				leaf = digest(chain[0])
			}
			svids = append(svids, map[string]interface{}{"spiffe_id": s.SpiffeId, "hint": s.Hint,
				"leaf_sha256": leaf, "chain_certs": len(chain), "key_sha256": digest(s.X509SvidKey),
				"bundle_certs": len(derCerts(s.Bundle))})
		}
		emit(map[string]interface{}{"type": "svid", "svids": svids})
	}
}

func fetchBundles(conn *grpc.ClientConn) int {
	stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509Bundles(workloadContext(),
		&workload.X509BundlesRequest{})
	if err != nil {
		return end(err)
	}
	for {
		r, err := stream.Recv()
		if err != nil {
			return end(err)
		}
		bundles := map[string]interface{}{}
		for domain, der := range r.Bundles {
			bundles[domain] = len(derCerts(der))
		}
		emit(map[string]interface{}{"type": "bundles", "bundles": bundles})
	}
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: sidecar_client_go SOCKET sds NAME... | svid | bundles")
		os.Exit(2)
	}
	path, mode, args := os.Args[1], os.Args[2], os.Args[3:]
	conn, err := grpc.Dial("unix://"+path, grpc.WithInsecure(),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}),
		grpc.WithBlock(), grpc.WithTimeout(20*time.Second))
	if err != nil {
		fmt.Fprintln(os.Stderr, "connect:", err)
		os.Exit(1)
	}
	defer conn.Close()
	emit(map[string]interface{}{"started": mode})
	switch mode {
	case "sds":
		os.Exit(streamSecrets(conn, args))
	case "svid":
		os.Exit(fetchSvids(conn))
	case "bundles":
		os.Exit(fetchBundles(conn))
	default:
		fmt.Fprintln(os.Stderr, "unknown mode "+mode)
		os.Exit(2)
	}
}
