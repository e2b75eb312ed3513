package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalmesh/shoal/api"
)

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func timeout(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return context.WithTimeout(cmd.Context(), 30*time.Second)
}

func newRunCmd(cf *clientFlags) *cobra.Command {
	var (
		file                        string
		image, driver, strategy     string
		replicas, port, servicePort int
		nodePort                    int
		cpu, memory                 int64
		env, command                []string
		jobType                     string
		asJSON                      bool
	)
	cmd := &cobra.Command{
		Use:   "run (-f FILE | NAME --image IMG [flags])",
		Short: "Create or update a job on any node",
		Example: `  shoal run -f web.yaml
  shoal run web --image docker.io/library/hello:v1 --replicas 3 --port 8080 --service-port 80 --node-port 30080
  shoal run tick --driver exec --command /bin/sleep,1000 --replicas 2`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := timeout(cmd)
			defer cancel()
			var (
				st  api.JobStatus
				err error
			)
			cl, err := cf.client()
			if err != nil {
				return err
			}
			switch {
			case file != "" && len(args) > 0:
				return errors.New("give either -f FILE or NAME with flags, not both")
			case file != "":
				spec, ctype, rerr := readSpec(file)
				if rerr != nil {
					return rerr
				}
				st, err = cl.PutJobSpec(ctx, spec, ctype)
			case len(args) == 1:
				j := api.Job{ID: args[0], Type: jobType, Task: api.Task{
					Driver: driver, Image: image, Command: command,
					Resources: api.Resources{CPUMillis: cpu, MemoryMB: memory},
				}}
				if cmd.Flags().Changed("replicas") {
					j.Replicas = &replicas
				}
				if len(env) > 0 {
					j.Task.Env = map[string]string{}
					for _, kv := range env {
						k, v, ok := strings.Cut(kv, "=")
						if !ok {
							return fmt.Errorf("--env %q: want KEY=VALUE", kv)
						}
						j.Task.Env[k] = v
					}
				}
				if port != 0 {
					j.Task.Ports = []api.Port{{Name: "main", Port: port, Protocol: "tcp"}}
				}
				if servicePort != 0 || nodePort != 0 {
					if servicePort == 0 {
						servicePort = port
					}
					j.Service = &api.Service{Port: servicePort, NodePort: nodePort, Strategy: strategy}
				}
				j.ApplyDefaults()
				// Validate locally so mistakes are named before any network call.
				if verr := j.Validate(); verr != nil {
					return verr
				}
				st, err = cl.PutJob(ctx, j)
			default:
				return errors.New("give -f FILE, or a job NAME and --image (see 'shoal run --help')")
			}
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(st)
			}
			fmt.Printf("job %s stored at version %s\n", st.ID, st.Version)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&file, "file", "f", "", "job spec file (JSON or YAML; - for stdin)")
	f.StringVar(&image, "image", "", "container image")
	f.StringVar(&driver, "driver", "containerd", "containerd or exec")
	f.StringSliceVar(&command, "command", nil, "command argv (comma separated); required for --driver exec")
	f.IntVar(&replicas, "replicas", 1, "number of replicas")
	f.IntVar(&port, "port", 0, "port the task listens on")
	f.IntVar(&servicePort, "service-port", 0, "port of the service VIP (enables a service)")
	f.IntVar(&nodePort, "node-port", 0, "node port on every node, 30000-32767 (enables a service)")
	f.StringVar(&strategy, "strategy", "", "load balancing: round_robin, random, source_hash, maglev")
	f.Int64Var(&cpu, "cpu", 100, "cpu millicores per replica")
	f.Int64Var(&memory, "memory", 64, "memory MB per replica")
	f.StringArrayVar(&env, "env", nil, "environment KEY=VALUE (repeatable)")
	f.StringVar(&jobType, "type", "service", "service or batch")
	f.BoolVar(&asJSON, "json", false, "print the stored job as JSON")
	return cmd
}

// readSpec reads a job file and names its content type from the extension
// or, for stdin, from its first character.
func readSpec(path string) ([]byte, string, error) {
	var (
		raw []byte
		err error
	)
	if path == "-" {
		raw, err = io.ReadAll(io.LimitReader(os.Stdin, 4<<20))
	} else {
		raw, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, "", fmt.Errorf("read job spec: %w", err)
	}
	switch strings.ToLower(filepath.Ext(path)) {
	case ".yaml", ".yml":
		return raw, "application/yaml", nil
	case ".json":
		return raw, "application/json", nil
	}
	if t := strings.TrimSpace(string(raw)); strings.HasPrefix(t, "{") {
		return raw, "application/json", nil
	}
	return raw, "application/yaml", nil
}

func newPsCmd(cf *clientFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List jobs and where their replicas run",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := timeout(cmd)
			defer cancel()
			cl, err := cf.client()
			if err != nil {
				return err
			}
			jobs, err := cl.Jobs(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(jobs)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "JOB\tTYPE\tRUNNING\tDRIVER\tIMAGE/COMMAND\tSERVICE")
			for _, j := range jobs {
				replicas := 1
				if j.Replicas != nil {
					replicas = *j.Replicas
				}
				// A replica being handed over runs twice for a moment: count
				// replicas, not copies.
				runningReplicas := map[int]bool{}
				for _, a := range j.Allocations {
					if a.State == "running" {
						runningReplicas[a.Replica] = true
					}
				}
				running := len(runningReplicas)
				what := j.Task.Image
				if what == "" {
					what = strings.Join(j.Task.Command, " ")
				}
				if len(what) > 40 {
					what = what[:37] + "..."
				}
				svc := "-"
				if j.Service != nil {
					svc = fmt.Sprintf("%s:%d", j.Service.Name, j.Service.Port)
					if j.Service.NodePort != 0 {
						svc += fmt.Sprintf(" (node port %d)", j.Service.NodePort)
					}
				}
				if len(j.Problems) > 0 {
					svc += " (see problems)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s\t%s\t%s\n", j.ID, j.Type, running, replicas, j.Task.Driver, what, svc)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			// Conflicts a partition left behind, and what was kept.
			for _, j := range jobs {
				for _, p := range j.Problems {
					fmt.Printf("problem: %s: %s\n", j.ID, p)
				}
			}
			fmt.Println()
			tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "REPLICA\tNODE\tSTATE\tIP\tHEALTH\tRESTARTS\tMESSAGE")
			for _, j := range jobs {
				for _, a := range j.Allocations {
					node, ip := a.Node, a.IP
					if node == "" {
						node = "-"
					}
					if ip == "" {
						ip = "-"
					}
					health := "-" // no check, or not running
					switch {
					case a.Healthy != nil && *a.Healthy:
						health = "healthy"
					case a.Healthy != nil:
						health = "unhealthy"
					case j.Health != nil && a.State == "running":
						health = "checking"
					}
					fmt.Fprintf(tw, "%s-%d\t%s\t%s\t%s\t%s\t%d\t%s\n", j.ID, a.Replica, node, a.State, ip, health, a.Restarts, a.Message)
				}
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	return cmd
}

func newRmCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME [NAME...]",
		Short: "Delete jobs",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := timeout(cmd)
			defer cancel()
			cl, err := cf.client()
			if err != nil {
				return err
			}
			var failed []string
			for _, id := range args {
				if _, err := cl.DeleteJob(ctx, id); err != nil {
					fmt.Fprintf(os.Stderr, "shoal: rm %s: %v\n", id, err)
					failed = append(failed, id)
					continue
				}
				fmt.Printf("deleted %s\n", id)
			}
			if len(failed) > 0 {
				return fmt.Errorf("could not delete %s", strings.Join(failed, ", "))
			}
			return nil
		},
	}
}

func newInspectCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect NAME",
		Short: "Print a job with its version and allocations as JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := timeout(cmd)
			defer cancel()
			cl, err := cf.client()
			if err != nil {
				return err
			}
			st, err := cl.Job(ctx, args[0])
			if err != nil {
				return err
			}
			return printJSON(st)
		},
	}
}

func newLogsCmd(cf *clientFlags) *cobra.Command {
	var (
		replica, tail int
		follow        bool
	)
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Print a replica's output, from whichever node runs it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			cl, err := cf.client()
			if err != nil {
				return err
			}
			rc, err := cl.Logs(ctx, args[0], replica, tail, follow)
			if err != nil {
				return err
			}
			defer rc.Close()
			if _, err := io.Copy(os.Stdout, rc); err != nil && ctx.Err() == nil {
				return fmt.Errorf("read log: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&replica, "replica", 0, "replica index")
	cmd.Flags().IntVar(&tail, "tail", 100, "lines of history to print first")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	return cmd
}
