package devcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	shoalrt "github.com/shoalmesh/shoal/runtime"
)

// agentGrace is how long agents get after SIGTERM to leave the cluster
// gracefully before they are killed.
const agentGrace = 5 * time.Second

// Down removes cluster name: its agents, their containers and tasks, its
// namespaces and host link, the containerd Up started for it (never one
// it did not start) and its directory. dir overrides where the cluster
// directory is looked for. It is idempotent and also removes what a
// failed Up left; found is false when there was nothing to remove.
func Down(ctx context.Context, name, dir string, w io.Writer) (found bool, err error) {
	say := progress(w)
	if err := ValidateName(name); err != nil {
		return false, err
	}
	if err := CheckHost("down"); err != nil {
		return false, err
	}
	unlock, err := lockBaseDir(say)
	if err != nil {
		return false, err
	}
	defer unlock()
	return down(ctx, name, dir, say)
}

// down is Down for a caller holding the lock.
func down(ctx context.Context, name, dir string, say func(string, ...any)) (found bool, err error) {
	dir, err = ResolveDir(name, dir)
	if err != nil {
		return false, err
	}
	st, recorded, err := readState(dir)
	if err != nil {
		say("warning: %v; removing what can be found by name", err)
	}
	if recorded && st.Name != name {
		return false, fmt.Errorf("directory %s belongs to dev cluster %s, not %s", dir, st.Name, name)
	}
	nss, err := clusterNamespaces(name)
	if err != nil {
		return false, err
	}
	_, dirErr := os.Stat(dir)
	_, linkErr := os.Lstat(DefaultDir(name))
	hostLink := "shoal-" + name + "0"
	agents := agentsUnder(dir)
	if !recorded && len(nss) == 0 && !linkExists(hostLink) && dirErr != nil && linkErr != nil && len(agents) == 0 {
		return false, nil
	}
	plan := planFromState(name, dir, st, maxNodeIndex(name, st, nss, dir))
	var errs []error

	// Agents first: a running agent would restart the tasks removed below.
	for _, n := range plan.Nodes {
		pid, err := readPIDFile(n.PIDPath)
		if err != nil {
			say("warning: %v", err)
		}
		if pid > 0 && isAgentOf(cmdline(pid), n.DataDir) && !slices.Contains(agents, pid) {
			agents = append(agents, pid)
		}
	}
	if len(agents) > 0 {
		say("stopping %s (SIGTERM, SIGKILL after %s)", count(len(agents), "agent"), agentGrace)
		if killed := terminate(agents, agentGrace); len(killed) > 0 {
			say("killed %s still running after %s", count(len(killed), "agent"), agentGrace)
		}
	}

	// Containers and tasks outlive their agents by design (adoption).
	pc := privateContainerdIn(dir)
	private := st.PrivateContainerd || fileExists(pc.PIDFile)
	sock := st.Containerd
	if private {
		sock = pc.Socket
	}
	if sock == "" {
		sock = shoalrt.DefaultContainerdAddress
	}
	say("removing the nodes' containers, tasks and images")
	if containerdServing(ctx, sock) {
		for _, n := range plan.Nodes {
			if err := shoalrt.CleanupContainerd(ctx, sock, n.Namespace); err != nil {
				errs = append(errs, err)
			}
		}
	} else if !private && recorded && st.Containerd != "" {
		say("warning: containerd at %s does not answer; containers of this cluster in it (if any) are left", sock)
	}
	for _, n := range plan.Nodes {
		// Also the cgroups runc left in every hierarchy.
		if err := shoalrt.Cleanup(n.Namespace); err != nil {
			errs = append(errs, err)
		}
	}

	// In the reverse order of creation: the nodes, then the hub.
	nss, err = clusterNamespaces(name)
	if err != nil {
		errs = append(errs, err)
	}
	if i := slices.Index(nss, hubNamespace(name)); i >= 0 {
		nss = append(slices.Delete(nss, i, i+1), hubNamespace(name))
	}
	if len(nss) > 0 {
		say("deleting namespaces %s", strings.Join(nss, ", "))
	}
	for _, ns := range nss {
		if err := removeNamespace(ctx, ns); err != nil {
			errs = append(errs, err)
		}
	}
	// Normally gone with the hub, which held its peer.
	if linkExists(hostLink) {
		if _, err := ip(ctx, "link", "del", hostLink); err != nil && linkExists(hostLink) {
			errs = append(errs, fmt.Errorf("delete host link: %w", err))
		}
	}

	if private {
		say("stopping the private containerd")
		if err := pc.stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if pids := killReferencing(dir); len(pids) > 0 {
		say("killed %d leftover process(es) of the cluster (pids %v)", len(pids), pids)
	}
	if err := removeClusterDir(name, dir, recorded); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return true, fmt.Errorf("dev down %s: %w", name, err)
	}
	return true, nil
}

// maxNodeIndex is the number of node slots Down must look at: the recorded
// node count, or more if namespaces or pid files say so.
func maxNodeIndex(name string, st state, nss []string, dir string) int {
	n := st.Nodes
	for _, ns := range nss {
		if i, ok := ClusterNamespace(name, ns); ok && i > n {
			n = i
		}
	}
	pidFiles, _ := filepath.Glob(filepath.Join(dir, "n*.pid"))
	for _, f := range pidFiles {
		if i, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f), "n"), ".pid")); err == nil && i > n {
			n = i
		}
	}
	return min(max(n, 1), MaxNodes)
}

// agentsUnder returns the running agents whose data directory is in dir,
// whatever their pid files say.
func agentsUnder(dir string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		argv := cmdline(pid)
		for i, a := range argv {
			if a == "--data-dir" && i+1 < len(argv) && strings.HasPrefix(argv[i+1], dir+"/") && isAgentOf(argv, argv[i+1]) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// removeClusterDir removes the cluster directory, and the symlink to it
// when it lives outside BaseDir. A directory is only removed if Up made
// it (it has the state file) or it is empty: --dir may point anywhere.
func removeClusterDir(name, dir string, recorded bool) error {
	var errs []error
	if _, err := os.Stat(dir); err == nil {
		if err := shoalrt.UnmountUnder(dir); err != nil {
			errs = append(errs, err)
		}
		entries, _ := os.ReadDir(dir)
		if recorded || len(entries) == 0 {
			if err := os.RemoveAll(dir); err != nil {
				errs = append(errs, fmt.Errorf("remove cluster directory: %w", err))
			}
		} else {
			errs = append(errs, fmt.Errorf("left %s in place: it has no %s, so dev up did not make it", dir, stateFile))
		}
	}
	if fi, err := os.Lstat(DefaultDir(name)); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		if err := os.Remove(DefaultDir(name)); err != nil {
			errs = append(errs, fmt.Errorf("remove cluster directory link: %w", err))
		}
	}
	return errors.Join(errs...)
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
