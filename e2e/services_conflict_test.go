package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// A job may name its service after another job: job web serves service
// frontend, then job api serves a service called web. VIPs belong to
// services, so frontend keeps its VIP on every node and web gets another.
func TestServiceVIPStaysWhenAnotherJobsServiceTakesTheJobsName(t *testing.T) {
	c := startCluster(t, 3)
	c.LoadHello(t)
	ctx := context.Background()

	web := webService("web", 1, "round_robin")
	web.Service.Name = "frontend"
	if _, err := c.Nodes[0].Client().PutJob(ctx, web); err != nil {
		t.Fatal(err)
	}
	frontendVIP := waitHealthyEndpoints(t, c.Nodes, "frontend", 1).VIP
	sameVIP(t, c.Nodes, "frontend", frontendVIP)

	apiJob := webService("api", 1, "round_robin")
	apiJob.Service.Name = "web"
	apiJob.Service.NodePort = 30081
	st, err := c.Nodes[1].Client().PutJob(ctx, apiJob)
	if err != nil {
		t.Fatal(err)
	}
	if st.Service == nil || st.Service.VIP == "" || st.Service.VIP == frontendVIP {
		t.Errorf("job api was stored with service %+v; want a VIP other than frontend's %s", st.Service, frontendVIP)
	}
	webVIP := waitHealthyEndpoints(t, c.Nodes, "web", 1).VIP
	if webVIP == frontendVIP {
		t.Fatalf("service web of job api is served at %s, frontend's VIP", webVIP)
	}
	sameVIP(t, c.Nodes, "web", webVIP)
	// frontend has not moved, on any node, now that web is served.
	sameVIP(t, c.Nodes, "frontend", frontendVIP)

	// Each VIP reaches its own job's replica, from inside a node.
	from := "/run/netns/" + c.Nodes[2].NS
	for vip, want := range map[string]string{frontendVIP: "hello from web-0", webVIP: "hello from api-0"} {
		Eventually(t, 20*time.Second, fmt.Sprintf("%s answers %q", vip, want), func() (bool, string) {
			out, err := httpGetFrom(from, "http://"+vip+":80/")
			if err != nil {
				return false, err.Error()
			}
			return strings.TrimSpace(out) == want, out
		})
	}
}

// sameVIP checks that every node serves the service at vip.
func sameVIP(t *testing.T, nodes []*Node, name, vip string) {
	t.Helper()
	for _, n := range nodes {
		s, ok, detail := serviceOf(n, name)
		if !ok || s.VIP != vip {
			t.Errorf("%s serves %s at %q, want %s: %s", n.Name, name, s.VIP, vip, detail)
		}
	}
}
