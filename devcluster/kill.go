package devcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	shoalrt "github.com/shoalmesh/shoal/runtime"
)

// Kill makes one node of a dev cluster fail the way a machine does: its
// agent gets SIGKILL (no graceful leave, so the others notice by failure
// detection) and every container and task it ran dies with it. The node's
// network namespace stays, as a powered-off machine's cable would; `dev
// down` removes it with the rest.
func Kill(ctx context.Context, name, dir, node string, w io.Writer) error {
	say := func(f string, args ...any) { fmt.Fprintf(w, f+"\n", args...) }
	dir, err := ResolveDir(name, dir)
	if err != nil {
		return err
	}
	st, recorded, err := readState(dir)
	if err != nil {
		return err
	}
	if !recorded {
		return fmt.Errorf("no dev cluster %s (no %s in %s)", name, stateFile, dir)
	}
	plan := planFromState(name, dir, st, st.Nodes)
	var target *NodePlan
	for i := range plan.Nodes {
		if plan.Nodes[i].Name == node {
			target = &plan.Nodes[i]
		}
	}
	if target == nil {
		return fmt.Errorf("dev cluster %s has no node %q (it has n1..n%d)", name, node, len(plan.Nodes))
	}
	pid, err := readPIDFile(target.PIDPath)
	if err != nil {
		return err
	}
	if pid <= 0 || !isAgentOf(cmdline(pid), target.DataDir) {
		return fmt.Errorf("the agent of %s is not running", node)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill the agent of %s: %w", node, err)
	}
	waitGone([]int{pid}, agentGrace)
	say("killed the agent of %s (pid %d) with SIGKILL", node, pid)
	sock := st.Containerd
	if st.PrivateContainerd {
		sock = privateContainerdIn(dir).Socket
	}
	var errs []error
	if containerdServing(ctx, sock) {
		errs = append(errs, shoalrt.CleanupContainerd(ctx, sock, target.Namespace))
	}
	errs = append(errs, shoalrt.Cleanup(target.Namespace))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("kill the replicas of %s: %w", node, err)
	}
	say("killed every replica of %s", node)
	return waitFailed(ctx, plan, target, say)
}

// waitFailed waits until another node's API reports node failed, so what
// follows a kill sees the cluster after it noticed.
func waitFailed(ctx context.Context, plan Plan, node *NodePlan, say func(string, ...any)) error {
	env, err := readEnv(plan.Dir)
	if err != nil {
		return err
	}
	var other *NodePlan
	for i := range plan.Nodes {
		if plan.Nodes[i].Name != node.Name {
			other = &plan.Nodes[i]
			break
		}
	}
	if other == nil {
		return nil // a one-node cluster: nobody to notice
	}
	c, err := env.Client(other.APIAddr())
	if err != nil {
		return err
	}
	began := time.Now()
	for {
		nodes, err := c.Nodes(ctx)
		if err == nil {
			for _, m := range nodes {
				if m.Name == node.Name && m.Status != "alive" {
					say("%s sees %s %s after %s; its replicas start on the others", other.Name, node.Name, m.Status, time.Since(began).Round(100*time.Millisecond))
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s to see %s fail: %w", other.Name, node.Name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
