package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/chanwatch/chanwatch/kv"
	"github.com/chanwatch/chanwatch/kv/kvstats"
)

// serveHTTP serves /metrics, /healthz, /readyz and /debug/pprof on addr
// until ctx is done and returns the address it listens on (the real port
// when addr asks for port 0). ready reports readiness; "" addr serves nothing.
func serveHTTP(ctx context.Context, addr string, reg *prometheus.Registry, ready func() bool, lg *zap.Logger) (string, error) {
	if addr == "" {
		return "", nil
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ready() {
			_, _ = w.Write([]byte("ready\n"))
			return
		}
		http.Error(w, "not ready", http.StatusServiceUnavailable)
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", usagef("--http %s: %v", addr, err)
	}
	lg.Info("serving http", zap.String("addr", ln.Addr().String()))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			lg.Error("http server", zap.Error(err))
		}
	}()
	return ln.Addr().String(), nil
}

// connectInstrumented connects like connect and measures every backend call
// on a fresh registry that also carries Go and process metrics.
func (g *globalFlags) connectInstrumented(ctx context.Context, lg *zap.Logger) (kv.Backend, *prometheus.Registry, func(), error) {
	b, closeB, err := g.connect(ctx, lg)
	if err != nil {
		return nil, nil, nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := kvstats.NewMetrics(reg)
	if err != nil {
		closeB()
		return nil, nil, nil, err
	}
	return kvstats.Wrap(b, m), reg, closeB, nil
}
