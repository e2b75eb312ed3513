package node

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var caEpoch = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func testCA(t *testing.T, now time.Time) (*CA, []byte) {
	t.Helper()
	certPEM, keyPEM, err := NewCA(now)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := ParseCA(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return ca, certPEM
}

func TestNewCAIsAnECDSAP256CertificateAuthority(t *testing.T) {
	ca, _ := testCA(t, caEpoch)
	if !ca.Cert.IsCA || ca.Cert.KeyUsage&x509.KeyUsageCertSign == 0 || !ca.Cert.MaxPathLenZero {
		t.Errorf("not a leaf-signing CA: IsCA %v usage %v", ca.Cert.IsCA, ca.Cert.KeyUsage)
	}
	if ca.Cert.PublicKeyAlgorithm != x509.ECDSA || ca.Cert.SignatureAlgorithm != x509.ECDSAWithSHA256 {
		t.Errorf("algorithm %v / %v, want ECDSA P-256", ca.Cert.PublicKeyAlgorithm, ca.Cert.SignatureAlgorithm)
	}
	if ca.Cert.NotAfter.Sub(caEpoch) < 9*365*24*time.Hour {
		t.Errorf("CA valid until %s only", ca.Cert.NotAfter)
	}
}

func TestIssuedCertificateVerifiesForItsNamesOnly(t *testing.T) {
	ca, _ := testCA(t, caEpoch)
	cert, err := ca.Issue([]string{"n1", "10.0.0.1", "localhost", "127.0.0.1"}, caEpoch, DefaultCertLifetime)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	verify := func(name string, at time.Time) error {
		_, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool, CurrentTime: at})
		return err
	}
	for _, name := range []string{"n1", "10.0.0.1", "localhost", "127.0.0.1"} {
		if err := verify(name, caEpoch.Add(time.Hour)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := verify("10.0.0.2", caEpoch.Add(time.Hour)); err == nil {
		t.Error("verified for an address it does not name")
	}
	if err := verify("n1", caEpoch.Add(DefaultCertLifetime+time.Minute)); err == nil {
		t.Error("verified after its lifetime")
	}
	// A little clock skew between agent and client is tolerated.
	if err := verify("n1", caEpoch.Add(-30*time.Minute)); err != nil {
		t.Errorf("a client 30 min behind: %v", err)
	}
	if cert.Leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || cert.Leaf.IsCA {
		t.Errorf("leaf usage %v, IsCA %v", cert.Leaf.ExtKeyUsage, cert.Leaf.IsCA)
	}
	// Another cluster's CA does not verify it.
	other, _ := testCA(t, caEpoch)
	otherPool := x509.NewCertPool()
	otherPool.AddCert(other.Cert)
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: "n1", Roots: otherPool, CurrentTime: caEpoch}); err == nil {
		t.Error("another CA verified the certificate")
	}
}

func TestIssueNeverOutlivesTheCA(t *testing.T) {
	ca, _ := testCA(t, caEpoch)
	near := ca.Cert.NotAfter.Add(-24 * time.Hour)
	cert, err := ca.Issue([]string{"n1"}, near, DefaultCertLifetime)
	if err != nil {
		t.Fatal(err)
	}
	if !cert.Leaf.NotAfter.Equal(ca.Cert.NotAfter) {
		t.Errorf("certificate ends %s, CA %s", cert.Leaf.NotAfter, ca.Cert.NotAfter)
	}
	if _, err := ca.Issue([]string{"n1"}, ca.Cert.NotAfter.Add(time.Second), DefaultCertLifetime); err == nil || !strings.Contains(err.Error(), "CA expired") {
		t.Errorf("issuing from an expired CA: %v", err)
	}
}

func TestParseCARejectsWhatCannotSign(t *testing.T) {
	ca, certPEM := testCA(t, caEpoch)
	_, otherKey, _ := NewCA(caEpoch)
	if _, err := ParseCA(certPEM, otherKey); err == nil || !strings.Contains(err.Error(), "does not belong") {
		t.Errorf("a key of another CA: %v", err)
	}
	leaf, _ := ca.Issue([]string{"n1"}, caEpoch, time.Hour)
	leafPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Certificate[0]})
	if _, err := ParseCA(leafPEM, otherKey); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Errorf("a serving certificate as CA: %v", err)
	}
	if _, err := ParseCA([]byte("junk"), otherKey); err == nil {
		t.Error("junk accepted as a certificate")
	}
	// openssl's "EC PRIVATE KEY" encoding is accepted too.
	ecDER, err := x509.MarshalECPrivateKey(mustECKey(t, ca))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseCA(certPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})); err != nil {
		t.Errorf("SEC 1 key: %v", err)
	}
}

func TestLoadCAReadsKeygenFiles(t *testing.T) {
	creds, err := GenerateCredentials(t.TempDir(), false, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(creds.Path(CACertFile), creds.Path(CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(creds.Path(CACertFile), filepath.Join(creds.Dir, "missing")); err == nil || !strings.Contains(err.Error(), "read CA key") {
		t.Errorf("missing key file: %v", err)
	}
}

func TestRenewalIsDueTwoThirdsIntoTheLife(t *testing.T) {
	ca, _ := testCA(t, caEpoch)
	cert, _ := ca.Issue([]string{"n1"}, caEpoch, 30*24*time.Hour)
	at := renewAt(cert.Leaf)
	life := cert.Leaf.NotAfter.Sub(cert.Leaf.NotBefore)
	if got := at.Sub(cert.Leaf.NotBefore); got != life*2/3 {
		t.Errorf("renewal %s into a %s life, want two thirds", got, life)
	}
	if at.After(cert.Leaf.NotAfter.Add(-9 * 24 * time.Hour)) {
		t.Errorf("renewal at %s leaves less than 9 days of a 30-day certificate", at)
	}
}

func TestCertSourceRenewsOnlyWhenDue(t *testing.T) {
	ca, _ := testCA(t, caEpoch)
	now := caEpoch
	src, err := newCertSource(ca, []string{"n1"}, 30*24*time.Hour, func() time.Time { return now }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	get := func() *tls.Certificate {
		c, err := src.GetCertificate(&tls.ClientHelloInfo{})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	first := get()
	now = caEpoch.Add(19 * 24 * time.Hour)
	if get() != first {
		t.Error("renewed before two thirds of the life")
	}
	now = caEpoch.Add(21 * 24 * time.Hour)
	second := get()
	if second == first || !second.Leaf.NotAfter.After(first.Leaf.NotAfter) {
		t.Fatal("not renewed after two thirds of the life")
	}
	if get() != second {
		t.Error("renewed again at once")
	}
	// Past the CA's expiry nothing can be issued: the old certificate
	// keeps being served rather than none.
	now = ca.Cert.NotAfter.Add(time.Hour)
	if get() != second {
		t.Error("a failed renewal replaced the certificate")
	}
}

func TestServingNamesCoverEveryWayToDialTheAgent(t *testing.T) {
	names := servingNames("n1", "10.0.0.1", "10.0.0.1:7700", []string{"api.example.com", "n1"})
	want := []string{"n1", "10.0.0.1", "localhost", "127.0.0.1", "::1", "api.example.com"}
	if !slices.Equal(names, want) {
		t.Errorf("names %v, want %v", names, want)
	}
	names = servingNames("n1", "10.0.0.1", "192.168.5.5:7700", nil)
	if !slices.Contains(names, "192.168.5.5") {
		t.Errorf("API address missing: %v", names)
	}
	names = servingNames("n1", "10.0.0.1", "0.0.0.0:7700", nil)
	if slices.Contains(names, "0.0.0.0") || !slices.Contains(names, "127.0.0.1") {
		t.Errorf("an API on every address: %v", names)
	}
}

func mustECKey(t *testing.T, ca *CA) *ecdsa.PrivateKey {
	t.Helper()
	k, ok := ca.Key.(*ecdsa.PrivateKey)
	if !ok {
		t.Fatalf("CA key is %T", ca.Key)
	}
	return k
}

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}
