package devcluster

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestValidateNameAcceptsShortLowercaseNamesOnly(t *testing.T) {
	for _, ok := range []string{"dev", "a", "t1234", "abcdefgh", "0"} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []struct{ name, want string }{
		{"", "empty"},
		{"abcdefghi", "longer than 8"},
		{"Dev", "lowercase"},
		{"a-b", "lowercase letters and digits"},
		{"a_b", "lowercase letters and digits"},
		{"é", "lowercase letters and digits"},
	} {
		err := ValidateName(bad.name)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("ValidateName(%q) = %v, want error containing %q", bad.name, err, bad.want)
		}
	}
}

func TestParseSubnetWantsAPrivateIPv4NetworkAddress(t *testing.T) {
	if p, err := ParseSubnet("10.98.0.0/24"); err != nil || p != netip.MustParsePrefix("10.98.0.0/24") {
		t.Fatalf("ParseSubnet(10.98.0.0/24) = %v, %v", p, err)
	}
	for _, bad := range []struct{ in, want string }{
		{"10.98.0.0", "want an IPv4 network"},
		{"10.98.0.5/24", "did you mean 10.98.0.0/24"},
		{"fd00::/64", "only IPv4"},
		{"8.8.8.0/24", "not a private range"},
		{"nonsense", "want an IPv4 network"},
	} {
		_, err := ParseSubnet(bad.in)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("ParseSubnet(%q) = %v, want error containing %q", bad.in, err, bad.want)
		}
	}
}

func TestPlanNamesAndAddressesEveryNode(t *testing.T) {
	p, err := NewPlan("dev", 3, netip.MustParsePrefix("10.98.0.0/24"), "")
	if err != nil {
		t.Fatal(err)
	}
	if p.Dir != "/var/lib/shoal-dev/dev" || p.Hub != "shoal-dev-hub" || p.HostLink != "shoal-dev0" || p.HostIP.String() != "10.98.0.1" {
		t.Errorf("cluster plan = dir %s hub %s link %s host %s", p.Dir, p.Hub, p.HostLink, p.HostIP)
	}
	want := []struct{ name, ns, veth, ip, api, data, log, pid string }{
		{"n1", "shoal-dev-n1", "h1", "10.98.0.11", "10.98.0.11:7700", "/var/lib/shoal-dev/dev/n1", "/var/lib/shoal-dev/dev/n1.log", "/var/lib/shoal-dev/dev/n1.pid"},
		{"n2", "shoal-dev-n2", "h2", "10.98.0.12", "10.98.0.12:7700", "/var/lib/shoal-dev/dev/n2", "/var/lib/shoal-dev/dev/n2.log", "/var/lib/shoal-dev/dev/n2.pid"},
		{"n3", "shoal-dev-n3", "h3", "10.98.0.13", "10.98.0.13:7700", "/var/lib/shoal-dev/dev/n3", "/var/lib/shoal-dev/dev/n3.log", "/var/lib/shoal-dev/dev/n3.pid"},
	}
	if len(p.Nodes) != len(want) {
		t.Fatalf("%d nodes, want %d", len(p.Nodes), len(want))
	}
	for i, w := range want {
		n := p.Nodes[i]
		got := []string{n.Name, n.Namespace, n.HubVeth, n.IP.String(), n.APIAddr(), n.DataDir, n.LogPath, n.PIDPath}
		exp := []string{w.name, w.ns, w.veth, w.ip, w.api, w.data, w.log, w.pid}
		if strings.Join(got, " ") != strings.Join(exp, " ") || n.Index != i+1 {
			t.Errorf("node %d = %v (index %d), want %v", i+1, got, n.Index, exp)
		}
	}
}

func TestPlanHostLinkFitsAnInterfaceName(t *testing.T) {
	p, err := NewPlan("abcdefgh", 1, netip.MustParsePrefix("10.98.0.0/24"), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.HostLink) > 15 {
		t.Errorf("host link %q is %d characters; IFNAMSIZ allows 15", p.HostLink, len(p.HostLink))
	}
}

func TestPlanAddressesCrossOctetsAndRespectTheSubnetSize(t *testing.T) {
	p, err := NewPlan("big", 50, netip.MustParsePrefix("10.97.0.0/16"), "/srv/big")
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Nodes[49].IP.String(); got != "10.97.0.60" {
		t.Errorf("node 50 at %s, want 10.97.0.60", got)
	}
	if p.Nodes[0].DataDir != "/srv/big/n1" {
		t.Errorf("data dir %s, want /srv/big/n1", p.Nodes[0].DataDir)
	}
	if got := offset(netip.MustParseAddr("10.0.0.250"), 10).String(); got != "10.0.1.4" {
		t.Errorf("offset carries into the next octet: got %s", got)
	}
	// A /28 has 16 addresses: .1 for the host, .11-.14 for nodes, .15 broadcast.
	if _, err := NewPlan("small", 4, netip.MustParsePrefix("10.97.0.0/28"), ""); err != nil {
		t.Errorf("4 nodes in a /28: %v", err)
	}
	for _, bad := range []struct {
		nodes  int
		subnet string
		dir    string
		want   string
	}{
		{5, "10.97.0.0/28", "", "too small for 5 nodes"},
		{0, "10.97.0.0/24", "", "want 1 to 50"},
		{51, "10.97.0.0/16", "", "want 1 to 50"},
		{1, "10.97.0.0/24", "relative/dir", "must be absolute"},
	} {
		_, err := NewPlan("x", bad.nodes, netip.MustParsePrefix(bad.subnet), bad.dir)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("NewPlan(%d nodes, %s, %q) = %v, want error containing %q", bad.nodes, bad.subnet, bad.dir, err, bad.want)
		}
	}
}

func TestClusterNamespaceMatchesOnlyThatClustersHubAndNodes(t *testing.T) {
	for _, tc := range []struct {
		name, ns string
		index    int
		ok       bool
	}{
		{"dev", "shoal-dev-hub", 0, true},
		{"dev", "shoal-dev-n1", 1, true},
		{"dev", "shoal-dev-n12", 12, true},
		{"dev", "shoal-dev-n0", 0, false},
		{"dev", "shoal-dev-n01", 0, false},
		{"dev", "shoal-dev-n1-web-0", 0, false}, // not a node: a task's
		{"dev", "shoal-shoal-dev-n1-web-0", 0, false},
		{"dev", "shoal-dev2-n1", 0, false},
		{"de", "shoal-dev-n1", 0, false},
		{"dev", "shoal-dev-x", 0, false},
		{"dev", "shoal-dev-n", 0, false},
	} {
		i, ok := ClusterNamespace(tc.name, tc.ns)
		if i != tc.index || ok != tc.ok {
			t.Errorf("ClusterNamespace(%q, %q) = %d, %v; want %d, %v", tc.name, tc.ns, i, ok, tc.index, tc.ok)
		}
	}
}

func TestEnvFileNamesTheCredentialFilesAndReadsBack(t *testing.T) {
	want := Env{Addr: "10.98.0.11:7700", TokenFile: "/var/lib/shoal-dev/dev/api.token", CACert: "/var/lib/shoal-dev/dev/ca.pem"}
	content := EnvFile("dev", want)
	for _, line := range []string{
		"export SHOAL_ADDR=10.98.0.11:7700\n",
		"export SHOAL_TOKEN_FILE=/var/lib/shoal-dev/dev/api.token\n",
		"export SHOAL_CACERT=/var/lib/shoal-dev/dev/ca.pem\n",
		// A token left in the shell would win over the file.
		"unset SHOAL_TOKEN\n",
	} {
		if !strings.Contains(content, line) {
			t.Errorf("env file lacks %q:\n%s", line, content)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(content), "\n") {
		if !strings.HasPrefix(line, "export ") && !strings.HasPrefix(line, "unset ") && !strings.HasPrefix(line, "#") {
			t.Errorf("env file line %q is neither an export, an unset nor a comment", line)
		}
	}
	if got := ParseEnvFile(content); got != want {
		t.Errorf("ParseEnvFile = %+v, want %+v", got, want)
	}
	// An env file of a cluster made before HTTPS holds the token itself.
	old := ParseEnvFile("export SHOAL_ADDR=10.98.0.11:7700\nexport SHOAL_TOKEN=tok_en-123\n")
	if old.Addr != "10.98.0.11:7700" || old.Token != "tok_en-123" {
		t.Errorf("old env file: %+v", old)
	}
}

func TestOverlappingRouteFindsAnyRouteIntoTheSubnet(t *testing.T) {
	routes := []byte(`[{"dst":"default","gateway":"192.0.2.1","dev":"eth0"},
		{"dst":"192.0.2.0/24","dev":"eth0"},
		{"type":"local","dst":"10.97.3.7","dev":"lo","table":"local"},
		{"dst":"10.96.0.0/16","dev":"wg0","table":"100"}]`)
	for _, tc := range []struct {
		subnet string
		found  bool
		desc   string
	}{
		{"10.98.0.0/24", false, ""},
		{"10.97.3.0/24", true, "10.97.3.7 dev lo table local"},
		{"10.96.5.0/24", true, "10.96.0.0/16 dev wg0 table 100"},
		{"10.0.0.0/8", true, "10.97.3.7 dev lo table local"},
		{"192.0.2.128/25", true, "192.0.2.0/24 dev eth0"},
	} {
		desc, found, err := overlappingRoute(routes, netip.MustParsePrefix(tc.subnet))
		if err != nil || found != tc.found || desc != tc.desc {
			t.Errorf("overlappingRoute(%s) = %q, %v, %v; want %q, %v", tc.subnet, desc, found, err, tc.desc, tc.found)
		}
	}
	if _, _, err := overlappingRoute([]byte("not json"), netip.MustParsePrefix("10.0.0.0/8")); err == nil {
		t.Error("garbage from ip was accepted")
	}
}

func TestAgentArgvEntersTheNodeNamespaceAndKeepsSecretsOff(t *testing.T) {
	p, err := NewPlan("dev", 2, netip.MustParsePrefix("10.98.0.0/24"), "")
	if err != nil {
		t.Fatal(err)
	}
	first := strings.Join(agentArgv(p, p.Nodes[0], "/bin/shoal", "/s.sock", nil), " ")
	want := "nsenter --net=/run/netns/shoal-dev-n1 -- /bin/shoal agent --name n1 --bind 10.98.0.11 --api 10.98.0.11:7700 " +
		"--data-dir /var/lib/shoal-dev/dev/n1 --containerd /s.sock --containerd-namespace shoal-dev-n1 " +
		"--gossip-key-file /var/lib/shoal-dev/dev/gossip.key --api-token-file /var/lib/shoal-dev/dev/api.token " +
		"--api-read-token-file /var/lib/shoal-dev/dev/api-read.token " +
		"--tls-ca /var/lib/shoal-dev/dev/ca.pem --tls-ca-key /var/lib/shoal-dev/dev/ca.key"
	if first != want {
		t.Errorf("first agent:\n got %s\nwant %s", first, want)
	}
	second := agentArgv(p, p.Nodes[1], "/bin/shoal", "/s.sock", []string{"--load-interval=1s"})
	tail := strings.Join(second[len(second)-3:], " ")
	if tail != "--join 10.98.0.11 --load-interval=1s" {
		t.Errorf("second agent ends %q: want it to join n1, then the extra args", tail)
	}
	if !isAgentOf(second, "/var/lib/shoal-dev/dev/n2") || isAgentOf(second, "/var/lib/shoal-dev/dev/n1") {
		t.Error("isAgentOf does not recognise the agent by its data directory")
	}
	for _, a := range second {
		if a == "--gossip-key" || a == "--api-token" || strings.HasPrefix(a, "--gossip-key=") || strings.HasPrefix(a, "--api-token=") {
			t.Errorf("secret flag %q on the command line", a)
		}
	}
}

func TestProcessMatchersRecogniseOnlyTheClustersProcesses(t *testing.T) {
	dir := "/var/lib/shoal-dev/dev"
	for _, tc := range []struct {
		argv []string
		want bool
	}{
		{[]string{"/bin/shoal", "agent", "--data-dir", dir + "/n1"}, true},
		{[]string{"nsenter", "--net=/run/netns/shoal-dev-n1", "--", "/bin/shoal", "agent", "--data-dir", dir + "/n1"}, true},
		{[]string{"/usr/bin/containerd", "--config", dir + "/containerd/config.toml"}, true},
		{[]string{"/usr/bin/containerd-shim-runc-v2", "-namespace", "x", "-address", dir + "/containerd/c.sock"}, true},
		{[]string{"tail", "-f", dir + "/n1.log"}, false},
		{[]string{"/bin/shoal", "dev", "down", "--dir", dir}, false},
		{[]string{"/bin/shoal", "agent", "--data-dir", "/var/lib/shoal-dev/dev2/n1"}, false},
		{nil, false},
	} {
		if got := referencesDir(tc.argv, dir); got != tc.want {
			t.Errorf("referencesDir(%q) = %v, want %v", tc.argv, got, tc.want)
		}
	}
	cfg := dir + "/containerd/config.toml"
	if !isContainerdOf([]string{"/usr/bin/containerd", "--config", cfg, "--log-level", "warn"}, cfg) ||
		isContainerdOf([]string{"/usr/bin/containerd"}, cfg) ||
		isContainerdOf([]string{"/bin/cat", cfg}, cfg) {
		t.Error("isContainerdOf is wrong")
	}
}

func TestResolveDirFollowsTheClustersLink(t *testing.T) {
	if got, _ := ResolveDir("dev", "/custom/place/"); got != "/custom/place" {
		t.Errorf("explicit dir: %s", got)
	}
	if _, err := ResolveDir("dev", "rel"); err == nil {
		t.Error("relative dir accepted")
	}
	// No link for a random name: the default place.
	const name = "zqnolink"
	if _, err := os.Lstat(DefaultDir(name)); err == nil {
		t.Skip("a cluster directory of that name exists")
	}
	if got, _ := ResolveDir(name, ""); got != DefaultDir(name) {
		t.Errorf("default dir: %s", got)
	}
}

func TestBinaryImageRefusesWhatCannotRunAlone(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "run.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		img  BinaryImage
		want string
	}{
		{BinaryImage{Binary: filepath.Join(dir, "missing"), Ref: "x:1"}, "no such file"},
		{BinaryImage{Binary: dir, Ref: "x:1"}, "not a regular file"},
		{BinaryImage{Binary: script, Ref: "x:1"}, "not an ELF executable"},
		{BinaryImage{Binary: "/bin/sh", Ref: "x:1"}, "dynamically linked"},
		{BinaryImage{Binary: script, Ref: "Not A Ref"}, "image reference"},
		{BinaryImage{Binary: script, Ref: "x:1", Env: []string{"NOEQUALS"}}, "want KEY=VALUE"},
		{BinaryImage{Ref: "x:1"}, "no binary given"},
	} {
		err := tc.img.Write(new(strings.Builder))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want error containing %q", tc.img, err, tc.want)
		}
	}
}
