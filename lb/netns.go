package lb

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	goruntime "runtime"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// sockets creates sockets in one network namespace. A socket belongs to
// the namespace of the thread that created it and stays there whatever
// thread later uses it, so only creation has to happen inside: a single
// goroutine, locked to an OS thread that has entered the namespace, creates
// them on request. Connecting, reading and writing happen on ordinary
// goroutines. With an empty path sockets are created directly.
type sockets struct {
	path string
	reqs chan func()
	done chan struct{}
}

func newSockets(path string) (*sockets, error) {
	s := &sockets{path: path}
	if path == "" {
		return s, nil
	}
	s.reqs = make(chan func())
	s.done = make(chan struct{})
	started := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it stays in the namespace and the
		// runtime discards it when this goroutine returns.
		goruntime.LockOSThread()
		defer close(s.done)
		ns, err := netns.GetFromPath(path)
		if err != nil {
			started <- fmt.Errorf("open network namespace %s: %w", path, err)
			return
		}
		err = netns.Set(ns)
		ns.Close()
		if err != nil {
			started <- fmt.Errorf("enter network namespace %s: %w", path, err)
			return
		}
		started <- nil
		for fn := range s.reqs {
			fn()
		}
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return s, nil
}

// do runs fn where sockets are created.
func (s *sockets) do(fn func()) {
	if s.reqs == nil {
		fn()
		return
	}
	ran := make(chan struct{})
	s.reqs <- func() { fn(); close(ran) }
	<-ran
}

func (s *sockets) close() {
	if s.reqs != nil {
		close(s.reqs)
		<-s.done
	}
}

func (s *sockets) listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	var err error
	s.do(func() { l, err = net.Listen(network, addr) })
	return l, err
}

func (s *sockets) listenPacket(network, addr string) (net.PacketConn, error) {
	var c net.PacketConn
	var err error
	s.do(func() { c, err = net.ListenPacket(network, addr) })
	return c, err
}

// dial connects to an IPv4 address and port ("tcp" or "udp"). In another
// namespace only socket(2) runs on the namespace thread; the connect is
// non-blocking and waited for here, so a slow backend does not hold up
// other dials.
func (s *sockets) dial(ctx context.Context, network string, to netip.AddrPort) (net.Conn, error) {
	if s.reqs == nil {
		var d net.Dialer
		return d.DialContext(ctx, network, to.String())
	}
	typ := unix.SOCK_STREAM
	if network == "udp" {
		typ = unix.SOCK_DGRAM
	}
	if !to.Addr().Is4() {
		return nil, fmt.Errorf("dial %s %s: only IPv4 backends", network, to)
	}
	var fd int
	var err error
	s.do(func() { fd, err = unix.Socket(unix.AF_INET, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0) })
	if err != nil {
		return nil, fmt.Errorf("dial %s %s: socket: %w", network, to, err)
	}
	f := os.NewFile(uintptr(fd), "dial "+to.String())
	defer f.Close() // FileConn holds a duplicate
	if err := connectNonblocking(ctx, fd, to); err != nil {
		return nil, fmt.Errorf("dial %s %s: %w", network, to, err)
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("dial %s %s: %w", network, to, err)
	}
	return c, nil
}

// connectNonblocking connects fd and waits until the connection is up, the
// peer refuses it or ctx ends.
func connectNonblocking(ctx context.Context, fd int, to netip.AddrPort) error {
	sa := &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
	err := unix.Connect(fd, sa)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINPROGRESS) {
		return fmt.Errorf("connect: %w", err)
	}
	for {
		wait := 100 * time.Millisecond
		if dl, ok := ctx.Deadline(); ok {
			wait = min(wait, time.Until(dl))
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if wait <= 0 {
			return context.DeadlineExceeded
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(fds, int(wait.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) || n == 0 {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll: %w", err)
		}
		soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return fmt.Errorf("getsockopt: %w", err)
		}
		if soErr != 0 {
			return fmt.Errorf("connect: %w", unix.Errno(soErr))
		}
		return nil
	}
}
