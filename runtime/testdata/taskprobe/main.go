// Command taskprobe is a test workload for Shoal's runtime and e2e tests:
// one static binary, put in an image, that serves, forks without end or
// reports what it sees, depending on its first argument.
//
//	taskprobe serve              answer HTTP on $PORT (default 8080) with "ok <hostname>"
//	taskprobe forkbomb           fork until the pids limit stops it, forever
//	taskprobe inside             exit 0 only inside a container whose pid 1 is taskprobe
//	taskprobe spawn-and-hang     start a child that sleeps, print its pid, sleep
//	taskprobe spew N             write N bytes of 'x' to stdout
//	taskprobe sleep              sleep forever
package main

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: taskprobe serve|forkbomb|inside|spawn-and-hang|spew N|sleep")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		serve()
	case "forkbomb":
		forkbomb()
	case "inside":
		// pid 1 of the container's pid namespace is its entrypoint.
		cmdline, err := os.ReadFile("/proc/1/cmdline")
		if err != nil || !bytes.Contains(cmdline, []byte("taskprobe")) {
			fmt.Printf("not inside: pid 1 is %q (%v)\n", cmdline, err)
			os.Exit(1)
		}
		fmt.Println("inside")
	case "spawn-and-hang":
		child := exec.Command("/proc/self/exe", "sleep")
		if err := child.Start(); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println(child.Process.Pid)
		sleepForever()
	case "spew":
		n, _ := strconv.Atoi(os.Args[2])
		os.Stdout.Write(bytes.Repeat([]byte("x"), n))
	case "sleep":
		sleepForever()
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
}

// sleepForever blocks; select{} would be a deadlock to the Go runtime.
func sleepForever() {
	for {
		time.Sleep(time.Hour)
	}
}

func serve() {
	host, _ := os.Hostname()
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "ok %s\n", host)
	})
	fmt.Println("listening on :" + port)
	if err := http.ListenAndServe(":"+port, nil); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
}

// forkbomb forks with the raw system call: the child is a copy of this
// one thread, which only goes on forking and never touches the Go runtime
// again, so it needs no memory of its own.
func forkbomb() {
	fmt.Println("forking")
	for {
		syscall.RawSyscall6(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	}
}
