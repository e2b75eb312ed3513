package node

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
)

// The cluster CA signs every agent's serving certificate, so a client that
// trusts ca.pem can talk HTTPS to any node without a certificate being
// handed out per machine. Every agent holds the CA key: like the gossip
// key, it is a cluster-wide secret.

// Lifetimes of what this file makes.
const (
	// caLifetime is long: replacing the CA means handing a new ca.pem to
	// every agent and client.
	caLifetime = 10 * 365 * 24 * time.Hour
	// DefaultCertLifetime is the serving certificates' life. Short, since
	// they renew themselves (at two thirds of it) and are never revoked.
	DefaultCertLifetime = 30 * 24 * time.Hour
	// clockSkew backdates certificates so a client whose clock is a little
	// behind the agent's accepts them.
	clockSkew = time.Hour
	// minReissue spaces out reissues when the CA's own expiry caps every
	// new certificate's life below the renewal point.
	minReissue = time.Minute
)

// CA is a cluster certificate authority: its certificate and private key.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA makes a cluster CA with an ECDSA P-256 key, valid from now for ten
// years, and returns its certificate and key as PEM (ca.pem, ca.key).
func NewCA(now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "Shoal cluster CA " + fmt.Sprintf("%032x", serial)[:8], Organization: []string{"Shoal"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// It signs leaf certificates only.
		MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode CA key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// LoadCA reads a CA certificate and its private key from PEM files.
func LoadCA(certFile, keyFile string) (*CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("read CA key: %w", err)
	}
	ca, err := ParseCA(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA %s, %s: %w", certFile, keyFile, err)
	}
	return ca, nil
}

// ParseCA decodes a PEM CA certificate and its PEM private key (PKCS#8,
// SEC 1 "EC PRIVATE KEY" or PKCS#1, as openssl writes them) and checks
// that they belong together and that the certificate may sign others.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("certificate: no PEM CERTIFICATE block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("certificate: not a CA certificate (no CA basic constraint or no certificate-signing usage)")
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, errors.New("key: no PEM block")
	}
	var parsed any
	switch kb.Type {
	case "EC PRIVATE KEY":
		parsed, err = x509.ParseECPrivateKey(kb.Bytes)
	case "RSA PRIVATE KEY":
		parsed, err = x509.ParsePKCS1PrivateKey(kb.Bytes)
	default:
		parsed, err = x509.ParsePKCS8PrivateKey(kb.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	signer, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key: %T cannot sign", parsed)
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, errors.New("the key does not belong to the certificate")
	}
	return &CA{Cert: cert, Key: signer}, nil
}

// Issue makes a serving certificate for names (DNS names and IP
// addresses) with a fresh ECDSA P-256 key, valid from now for lifetime but
// never beyond the CA's own expiry.
func (ca *CA) Issue(names []string, now time.Time, lifetime time.Duration) (*tls.Certificate, error) {
	if !now.Before(ca.Cert.NotAfter) {
		return nil, fmt.Errorf("the cluster CA expired on %s: make a new one (shoal keygen --dir) and give it to every agent and client", ca.Cert.NotAfter.UTC().Format(time.DateOnly))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate serving key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: names[0], Organization: []string{"Shoal"}},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     now.Add(lifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign serving certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("read back serving certificate: %w", err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

func randomSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generate certificate serial: %w", err)
	}
	return serial, nil
}

// renewAt is when a certificate is replaced: two thirds into its life,
// which leaves a third of it to retry in, the habit of ACME clients.
func renewAt(leaf *x509.Certificate) time.Time {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	return leaf.NotBefore.Add(life * 2 / 3)
}

// servingNames are the names an agent's certificate carries: whatever a
// client may dial it by. An API on every address (0.0.0.0) adds the
// machine's interface addresses.
func servingNames(nodeName, bindAddr, apiAddr string, extra []string) []string {
	seen := map[string]bool{}
	var names []string
	add := func(n string) {
		if n == "" || seen[n] {
			return
		}
		if a, err := netip.ParseAddr(n); err == nil && a.IsUnspecified() {
			return
		}
		seen[n] = true
		names = append(names, n)
	}
	add(nodeName)
	add(bindAddr)
	host, _, _ := net.SplitHostPort(apiAddr)
	if a, err := netip.ParseAddr(host); host == "" || (err == nil && a.IsUnspecified()) {
		if addrs, err := net.InterfaceAddrs(); err == nil {
			for _, ia := range addrs {
				if p, err := netip.ParsePrefix(ia.String()); err == nil {
					add(p.Addr().String())
				}
			}
		}
	} else {
		add(host)
	}
	for _, n := range append([]string{"localhost", "127.0.0.1", "::1"}, extra...) {
		add(n)
	}
	return names
}

// certSource hands the TLS stack the agent's serving certificate and
// replaces it once it is two thirds through its life. It renews during a
// handshake (tls.Config.GetCertificate), so no goroutine is needed and an
// agent that slept through the renewal point renews on its next call.
type certSource struct {
	ca       *CA
	names    []string
	lifetime time.Duration
	now      func() time.Time
	log      *slog.Logger

	mu     sync.Mutex
	cert   *tls.Certificate
	issued time.Time
}

// newCertSource issues the first certificate at once, so a CA that
// cannot sign fails the agent's start rather than its first client.
func newCertSource(ca *CA, names []string, lifetime time.Duration, now func() time.Time, log *slog.Logger) (*certSource, error) {
	s := &certSource{ca: ca, names: names, lifetime: lifetime, now: now, log: log}
	cert, err := ca.Issue(names, now(), lifetime)
	if err != nil {
		return nil, err
	}
	s.cert, s.issued = cert, now()
	if until := ca.Cert.NotAfter.Sub(now()); until < 2*lifetime {
		log.Warn("the cluster CA expires soon: make a new one (shoal keygen --dir) and give it to every agent and client",
			"expires", ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return s, nil
}

// GetCertificate is the tls.Config hook.
func (s *certSource) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if !now.Before(renewAt(s.cert.Leaf)) && now.Sub(s.issued) >= minReissue {
		cert, err := s.ca.Issue(s.names, now, s.lifetime)
		if err != nil {
			// The old certificate may still be valid; keep serving it.
			s.log.Warn("renew the API's serving certificate", "err", err, "expires", s.cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
			return s.cert, nil
		}
		s.cert, s.issued = cert, now
		s.log.Info("renewed the API's serving certificate", "expires", cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return s.cert, nil
}

// tlsConfig serves the source's certificate with TLS 1.2 or later.
func (s *certSource) tlsConfig() *tls.Config {
	return &tls.Config{GetCertificate: s.GetCertificate, MinVersion: tls.VersionTLS12}
}
