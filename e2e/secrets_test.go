package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
)

func TestSecretsAndConfigsAreMountedAndSealed(t *testing.T) {
	c := startCluster(t, 2)
	c.LoadHello(t)
	ctx := context.Background()
	// Written at n1, used by a replica wherever it lands.
	if _, err := c.Nodes[0].Client().PutData(ctx, api.KindSecret, "db", api.Data{Data: map[string]string{"password": "hunter2-very-secret"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Nodes[0].Client().PutData(ctx, api.KindConfig, "web", api.Data{Data: map[string]string{"greeting.txt": "hello config"}}); err != nil {
		t.Fatal(err)
	}
	job := helloContainerJob("sec", 2)
	job.Task.Secrets = []api.DataMount{{Name: "db"}}
	job.Task.Configs = []api.DataMount{{Name: "web", Path: "/etc/web"}}
	if _, err := c.Nodes[1].Client().PutJob(ctx, job); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 60*time.Second, "2 replicas running", func() (bool, string) {
		_, total, detail := runningByNode(c.Nodes[0], "sec")
		return total == 2, detail
	})
	for _, n := range c.Nodes {
		for id, task := range n.containers(t) {
			root := fmt.Sprintf("/proc/%d/root", task.PID)
			got, err := os.ReadFile(root + "/run/secrets/db/password")
			if err != nil || string(got) != "hunter2-very-secret" {
				t.Errorf("%s on %s: secret file = %q, %v", id, n.Name, got, err)
			}
			got, err = os.ReadFile(root + "/etc/web/greeting.txt")
			if err != nil || string(got) != "hello config" {
				t.Errorf("%s on %s: config file = %q, %v", id, n.Name, got, err)
			}
			if err := os.WriteFile(root+"/run/secrets/db/password", []byte("x"), 0o644); err == nil {
				t.Errorf("%s: the secret mount is writable", id)
			}
		}
	}
	// The API shows a secret's keys, never its value; a config's values.
	list, err := c.Nodes[1].Client().ListData(ctx, api.KindSecret)
	if err != nil || len(list) != 1 || list[0].Name != "db" || strings.Join(list[0].Keys, ",") != "password" || list[0].Values != nil {
		t.Errorf("secret list = %+v, %v", list, err)
	}
	info, err := c.Nodes[1].Client().GetData(ctx, api.KindSecret, "db")
	if err != nil || info.Values != nil {
		t.Errorf("secret get = %+v, %v", info, err)
	}
	cfg, err := c.Nodes[1].Client().GetData(ctx, api.KindConfig, "web")
	if err != nil || cfg.Values["greeting.txt"] != "hello config" {
		t.Errorf("config get = %+v, %v", cfg, err)
	}
	// At rest the secret is sealed: no node's state file holds the value.
	for _, n := range c.Nodes {
		raw, err := os.ReadFile(filepath.Join(n.DataDir, "state.db"))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(raw), "hunter2-very-secret") {
			t.Errorf("%s's state file holds the secret in the clear", n.Name)
		}
	}
	// Bad input is refused with the field named.
	_, err = c.Nodes[0].Client().PutData(ctx, api.KindSecret, "Bad_Name", api.Data{Data: map[string]string{"k": "v"}})
	if se, ok := err.(*api.StatusError); !ok || se.Code != 400 || !strings.Contains(se.Message, "name") {
		t.Errorf("bad name: %v", err)
	}
	_, err = c.Nodes[0].Client().PutData(ctx, api.KindSecret, "x", api.Data{Data: map[string]string{"../etc/passwd": "v"}})
	if se, ok := err.(*api.StatusError); !ok || se.Code != 400 {
		t.Errorf("path-like key: %v", err)
	}
	// A job naming a secret that does not exist fails with the reason.
	missing := helloContainerJob("nosec", 1)
	missing.Task.Secrets = []api.DataMount{{Name: "absent"}}
	if _, err := c.Nodes[0].Client().PutJob(ctx, missing); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 30*time.Second, "missing secret reported", func() (bool, string) {
		st, err := c.Nodes[0].Client().Job(ctx, "nosec")
		if err != nil {
			return false, err.Error()
		}
		for _, a := range st.Allocations {
			if a.State == "failed" && strings.Contains(a.Message, `secret "absent" does not exist`) {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v", st.Allocations)
	})
}
