package devcluster

import "context"

// Status is what exists of a cluster on this machine.
type Status struct {
	Name string
	Dir  string
	// Recorded is set when the cluster directory has Up's state file.
	Recorded bool
	Subnet   string
	// Namespaces are the cluster's existing network namespaces.
	Namespaces []string
	HostLink   string
	// HostLinkUp is set when the host link exists.
	HostLinkUp bool
	Agents     []AgentStatus
	// Containerd is the socket the agents use, PrivateContainerd set when
	// Up started that daemon, ContainerdServing when it answers.
	Containerd        string
	PrivateContainerd bool
	ContainerdServing bool
	// Env is the env file's content, for asking a node.
	Env   Env
	Image string
}

// AgentStatus is one node's agent process.
type AgentStatus struct {
	Name    string
	PID     int
	Running bool
	Log     string
}

// Up reports whether anything of the cluster exists.
func (s Status) Up() bool {
	return s.Recorded || len(s.Namespaces) > 0 || s.HostLinkUp
}

// GetStatus looks at what exists of cluster name. It changes nothing and
// needs root only to read the env file and the token file it names.
func GetStatus(ctx context.Context, name, dir string) (Status, error) {
	if err := ValidateName(name); err != nil {
		return Status{}, err
	}
	dir, err := ResolveDir(name, dir)
	if err != nil {
		return Status{}, err
	}
	st, recorded, err := readState(dir)
	if err != nil {
		return Status{}, err
	}
	nss, err := clusterNamespaces(name)
	if err != nil {
		return Status{}, err
	}
	s := Status{
		Name: name, Dir: dir, Recorded: recorded, Subnet: st.Subnet,
		Namespaces: nss, Containerd: st.Containerd, PrivateContainerd: st.PrivateContainerd, Image: st.Image,
	}
	plan := planFromState(name, dir, st, maxNodeIndex(name, st, nss, dir))
	s.HostLink = plan.HostLink
	s.HostLinkUp = linkExists(plan.HostLink)
	if recorded || len(nss) > 0 {
		for _, n := range plan.Nodes {
			pid, _ := readPIDFile(n.PIDPath)
			s.Agents = append(s.Agents, AgentStatus{
				Name: n.Name, PID: pid, Log: n.LogPath,
				Running: pid > 0 && alive(pid) && isAgentOf(cmdline(pid), n.DataDir),
			})
		}
	}
	if s.Containerd != "" {
		s.ContainerdServing = containerdServing(ctx, s.Containerd)
	}
	if env, err := readEnv(dir); err == nil {
		s.Env = env
	}
	return s, nil
}
