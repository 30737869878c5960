package netproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echo serves an echo server on loopback until the test ends.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { _ = ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); _ = c.Close() }()
		}
	}()
	return ln.Addr().String()
}

func dial(t *testing.T, p *Proxy) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, bufio.NewReader(c)
}

func roundTrip(c net.Conn, r *bufio.Reader, msg string, within time.Duration) (string, error) {
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return "", err
	}
	_ = c.SetReadDeadline(time.Now().Add(within))
	return r.ReadString('\n')
}

func TestPassBlackholeHeal(t *testing.T) {
	p, err := New(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, r := dial(t, p)
	if got, err := roundTrip(c, r, "one", 5*time.Second); err != nil || got != "one\n" {
		t.Fatalf("pass: %q, %v", got, err)
	}

	p.Blackhole()
	if got, err := roundTrip(c, r, "two", 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("blackhole delivered %q, %v", got, err)
	}
	// A new connection during the blackhole is accepted but carries nothing.
	c2, r2 := dial(t, p)
	if got, err := roundTrip(c2, r2, "new", 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("blackhole delivered %q on a new connection, %v", got, err)
	}

	// Healing delivers the held bytes, as TCP retransmission would.
	p.Pass()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := r.ReadString('\n'); err != nil || got != "two\n" {
		t.Fatalf("after heal: %q, %v", got, err)
	}
	_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := r2.ReadString('\n'); err != nil || got != "new\n" {
		t.Fatalf("new conn after heal: %q, %v", got, err)
	}
	if s := p.Stats(); s.Accepted != 2 || s.Up == 0 || s.Down == 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestReset(t *testing.T) {
	p, err := New(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, r := dial(t, p)
	if _, err := roundTrip(c, r, "one", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Blackhole() // a blackholed copier must wake up on Reset too
	_, _ = c.Write([]byte("held\n"))
	p.Reset()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.ReadString('\n'); !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.EOF) {
		t.Fatalf("open conn after Reset: %v, want a reset", err)
	}
	// A new connection during Reset is reset at once: the RST may even beat
	// the client's own connect, so a refused dial is a pass too.
	if c2, err := net.Dial("tcp", p.Addr()); err != nil {
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("dial during Reset: %v, want a reset", err)
		}
	} else {
		t.Cleanup(func() { _ = c2.Close() })
		if _, err := roundTrip(c2, bufio.NewReader(c2), "x", 5*time.Second); err == nil {
			t.Fatal("new conn during Reset carried data")
		}
	}
	p.Pass()
	c3, r3 := dial(t, p)
	if got, err := roundTrip(c3, r3, "back", 5*time.Second); err != nil || got != "back\n" {
		t.Fatalf("after Reset→Pass: %q, %v", got, err)
	}
	if p.Stats().Reset < 2 {
		t.Fatalf("stats %+v, want >= 2 resets", p.Stats())
	}
}

func TestCloseEndsBlackholedConns(t *testing.T) {
	p, err := New(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	c, r := dial(t, p)
	p.Blackhole()
	_, _ = c.Write([]byte("held\n"))
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.ReadString('\n'); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("conn after Close: %v, want closed", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := New(""); err == nil {
		t.Fatal("New with empty target succeeded")
	}
}

// TestHoldUp: the client's bytes wait in the proxy while the target's still
// reach the client; passing again delivers the held ones.
func TestHoldUp(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 4)
	push := make(chan string, 4)
	done := make(chan struct{})
	t.Cleanup(func() { _ = ln.Close(); <-done })
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		go func() {
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				got <- line
			}
		}()
		for msg := range push {
			if _, err := c.Write([]byte(msg)); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { close(push) })

	p, err := New(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, r := dial(t, p)
	if _, err := c.Write([]byte("one\n")); err != nil {
		t.Fatal(err)
	}
	if line := <-got; line != "one\n" {
		t.Fatalf("pass: server got %q", line)
	}

	p.HoldUp()
	if p.Mode() != HoldUp || p.Mode().String() != "hold-up" {
		t.Fatalf("mode %v", p.Mode())
	}
	// Two writes: the second arrives while the first is held, and is
	// counted as held too.
	if _, err := c.Write([]byte("two\n")); err != nil {
		t.Fatal(err)
	}
	waitStats(t, p, func(s Stats) bool { return s.HeldUp == 4 })
	if _, err := c.Write([]byte("three\n")); err != nil {
		t.Fatal(err)
	}
	// Downstream flows while upstream is held.
	push <- "event\n"
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := r.ReadString('\n'); err != nil || line != "event\n" {
		t.Fatalf("hold-up: client read %q, %v", line, err)
	}
	waitStats(t, p, func(s Stats) bool { return s.HeldUp == 10 })
	select {
	case line := <-got:
		t.Fatalf("hold-up delivered %q upstream", line)
	default:
	}

	p.Pass()
	for _, want := range []string{"two\n", "three\n"} {
		select {
		case line := <-got:
			if line != want {
				t.Fatalf("after pass: %q, want %q", line, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("held bytes not delivered after pass")
		}
	}
	// The counters move just after each write.
	waitStats(t, p, func(s Stats) bool { return s.HeldUp == 0 && s.HeldDown == 0 && s.Up == 14 && s.Down == 6 })
}

// waitStats polls p's counters until ok holds, failing after 5s.
func waitStats(t *testing.T, p *Proxy, ok func(Stats) bool) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !ok(p.Stats()) {
		select {
		case <-deadline:
			t.Fatalf("stats %+v", p.Stats())
		case <-tick.C:
		}
	}
}
