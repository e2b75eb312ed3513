// Package freeport finds ports for tests that start agents on loopback.
package freeport

import (
	"math/rand/v2"
	"net"
	"strconv"
	"testing"
)

// Get returns a port on ip that was free for TCP and UDP a moment ago.
// It picks outside the kernel's ephemeral range (32768-60999), where
// outgoing connections of concurrent tests take ports between this check
// and the caller's bind; gossip needs both protocols.
func Get(t testing.TB, ip string) int {
	t.Helper()
	for range 200 {
		port := 20000 + rand.IntN(12000)
		addr := net.JoinHostPort(ip, strconv.Itoa(port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err != nil {
			continue
		}
		pc.Close()
		return port
	}
	t.Fatal("find free port: none after 200 tries")
	return 0
}
