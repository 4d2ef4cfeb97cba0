// healthbench: the load generator and grpc-go stock health server for `make bench`.
//
// Built offline from Debian's golang-google-grpc-dev (GOPATH=/usr/share/gocode,
// GO111MODULE=off). Every mode prints one JSON object on stdout.
//
//	healthbench server -addr 127.0.0.1:0          grpc-go's stock health.NewServer()
//	healthbench closed -addr A -conns 4 -inflight 64 -duration 5s -service liveness
//	healthbench open   -addr A -conns 4 -rate 1000 -duration 10s -service liveness
//	healthbench watch  -addr A -conns 4 -streams 100 -ramp 0 -hold 60s   (opens Watch streams, holds them)
//	healthbench probe  -addr A -rate 10 -duration 10s -timeout 1s (fresh connection per probe)
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

func emit(v interface{}) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

func percentiles(lat []float64) map[string]float64 {
	out := map[string]float64{"n": float64(len(lat))}
	if len(lat) == 0 {
		return out
	}
	sort.Float64s(lat)
	q := func(p float64) float64 {
		i := int(p * float64(len(lat)-1))
		return lat[i]
	}
	out["p50_ms"] = q(0.50)
	out["p90_ms"] = q(0.90)
	out["p99_ms"] = q(0.99)
	out["p999_ms"] = q(0.999)
	out["max_ms"] = lat[len(lat)-1]
	return out
}

func dial(addr string) *grpc.ClientConn {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, addr, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(2)
	}
	return conn
}

func dialAll(addr string, n int) []healthpb.HealthClient {
	var out []healthpb.HealthClient
	for i := 0; i < n; i++ {
		out = append(out, healthpb.NewHealthClient(dial(addr)))
	}
	return out
}

func serverMode(addr string) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(2)
	}
	s := grpc.NewServer()
	hs := health.NewServer()
	for _, svc := range []string{"", "liveness", "readiness", "startup"} {
		hs.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	}
	healthpb.RegisterHealthServer(s, hs)
	emit(map[string]interface{}{"port": lis.Addr().(*net.TCPAddr).Port, "pid": os.Getpid()})
	go func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
		<-ch
		s.Stop()
	}()
	_ = s.Serve(lis)
}

func closedMode(addr, service string, conns, inflight int, warmup, duration time.Duration) {
	clients := dialAll(addr, conns)
	req := &healthpb.HealthCheckRequest{Service: service}
	var stop int32
	var measuring int32
	var ok, errs int64
	lats := make([][]float64, inflight)
	var wg sync.WaitGroup
	for i := 0; i < inflight; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := clients[i%len(clients)]
			for atomic.LoadInt32(&stop) == 0 {
				t0 := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := c.Check(ctx, req)
				cancel()
				if atomic.LoadInt32(&measuring) == 1 {
					if err != nil {
						atomic.AddInt64(&errs, 1)
					} else {
						atomic.AddInt64(&ok, 1)
						if len(lats[i]) < 200000 {
							lats[i] = append(lats[i], float64(time.Since(t0).Microseconds())/1000)
						}
					}
				}
			}
		}(i)
	}
	time.Sleep(warmup)
	atomic.StoreInt32(&measuring, 1)
	t0 := time.Now()
	emit(map[string]interface{}{"event": "measuring"})
	time.Sleep(duration)
	atomic.StoreInt32(&measuring, 0)
	elapsed := time.Since(t0).Seconds()
	atomic.StoreInt32(&stop, 1)
	n := atomic.LoadInt64(&ok)
	var all []float64
	for _, l := range lats {
		all = append(all, l...)
	}
	wg.Wait()
	emit(map[string]interface{}{"ok": n, "errors": atomic.LoadInt64(&errs), "seconds": elapsed,
		"rps": float64(n) / elapsed, "latency": percentiles(all)})
}

func openMode(addr, service string, conns int, rate float64, warmup, duration time.Duration) {
	clients := dialAll(addr, conns)
	req := &healthpb.HealthCheckRequest{Service: service}
	interval := time.Duration(float64(time.Second) / rate)
	var mu sync.Mutex
	var lat []float64
	var errs, late int64
	var wg sync.WaitGroup
	total := int((warmup + duration).Seconds() * rate)
	nWarm := int(warmup.Seconds() * rate)
	start := time.Now().Add(10 * time.Millisecond)
	emit(map[string]interface{}{"event": "started"})
	for i := 0; i < total; i++ {
		intended := start.Add(time.Duration(i) * interval)
		if d := time.Until(intended); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func(i int, intended time.Time) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := clients[i%len(clients)].Check(ctx, req)
			cancel()
			// latency from the intended send time: no coordinated omission
			ms := float64(time.Since(intended).Microseconds()) / 1000
			if i < nWarm {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs++
				return
			}
			lat = append(lat, ms)
		}(i, intended)
		if time.Since(intended) > 100*time.Millisecond {
			late++
		}
	}
	wg.Wait()
	emit(map[string]interface{}{"offered_rps": rate, "errors": errs, "generator_late": late,
		"latency": percentiles(lat)})
}

func watchMode(addr, service string, conns, streams, ramp int, hold time.Duration) {
	clients := dialAll(addr, conns)
	var opened, refused, other, updates int64
	var errMu sync.Mutex
	var errExample string
	noteErr := func(err error) {
		errMu.Lock()
		if errExample == "" {
			errExample = err.Error()
		}
		errMu.Unlock()
	}
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), hold)
	defer cancel()
	firsts := make(chan struct{}, streams)
	// at most `ramp` streams waiting for their first message at a time (0: all at once)
	if ramp <= 0 {
		ramp = streams
	}
	sem := make(chan struct{}, ramp)
	for i := 0; i < streams; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			released := false
			release := func() {
				if !released {
					released = true
					<-sem
				}
			}
			defer release()
			st, err := clients[i%len(clients)].Watch(ctx, &healthpb.HealthCheckRequest{Service: service})
			if err != nil {
				atomic.AddInt64(&other, 1)
				noteErr(err)
				release()
				firsts <- struct{}{}
				return
			}
			first := true
			for {
				_, err := st.Recv()
				if err != nil {
					if first {
						if status.Code(err) == codes.ResourceExhausted {
							atomic.AddInt64(&refused, 1)
						} else if ctx.Err() == nil {
							atomic.AddInt64(&other, 1)
							noteErr(err)
						}
						release()
						firsts <- struct{}{}
					}
					return
				}
				if first {
					first = false
					atomic.AddInt64(&opened, 1)
					release()
					firsts <- struct{}{}
				} else {
					atomic.AddInt64(&updates, 1)
				}
			}
		}(i)
	}
	deadline := time.After(30 * time.Second)
	for got := 0; got < streams; got++ {
		select {
		case <-firsts:
		case <-deadline:
			got = streams
		}
	}
	emit(map[string]interface{}{"event": "open", "opened": atomic.LoadInt64(&opened),
		"refused": atomic.LoadInt64(&refused), "failed": atomic.LoadInt64(&other),
		"error_example": errExample})
	<-ctx.Done()
	wg.Wait()
	emit(map[string]interface{}{"event": "closed", "updates": atomic.LoadInt64(&updates)})
}

func probeMode(addr, service string, rate float64, duration, timeout time.Duration) {
	interval := time.Duration(float64(time.Second) / rate)
	var mu sync.Mutex
	var lat []float64
	var fails []string
	var wg sync.WaitGroup
	total := int(duration.Seconds() * rate)
	start := time.Now()
	for i := 0; i < total; i++ {
		intended := start.Add(time.Duration(i) * interval)
		if d := time.Until(intended); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			conn, err := grpc.DialContext(ctx, addr, grpc.WithInsecure(), grpc.WithBlock())
			var resp *healthpb.HealthCheckResponse
			if err == nil {
				resp, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
				conn.Close()
			}
			ms := float64(time.Since(t0).Microseconds()) / 1000
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				fails = append(fails, err.Error())
			} else if resp.Status != healthpb.HealthCheckResponse_SERVING {
				fails = append(fails, resp.Status.String())
			} else {
				lat = append(lat, ms)
			}
		}()
	}
	wg.Wait()
	if len(fails) > 5 {
		fails = fails[:5]
	}
	emit(map[string]interface{}{"probes": total, "failed_examples": fails, "latency": percentiles(lat)})
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: healthbench server|closed|open|watch|probe [flags]")
		os.Exit(1)
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "address")
	service := fs.String("service", "liveness", "service name")
	conns := fs.Int("conns", 4, "connections")
	inflight := fs.Int("inflight", 64, "concurrent in-flight Checks (closed loop)")
	rate := fs.Float64("rate", 1000, "offered rate per second (open loop, probe)")
	streams := fs.Int("streams", 100, "Watch streams")
	ramp := fs.Int("ramp", 0, "Watch streams opening at a time (0: all at once)")
	warmup := fs.Duration("warmup", time.Second, "warm-up before measuring")
	duration := fs.Duration("duration", 5*time.Second, "measurement time")
	hold := fs.Duration("hold", 60*time.Second, "how long Watch streams stay open")
	timeout := fs.Duration("timeout", time.Second, "probe budget (dial + Check)")
	_ = fs.Parse(os.Args[2:])
	switch mode {
	case "server":
		serverMode(*addr)
	case "closed":
		closedMode(*addr, *service, *conns, *inflight, *warmup, *duration)
	case "open":
		openMode(*addr, *service, *conns, *rate, *warmup, *duration)
	case "watch":
		watchMode(*addr, *service, *conns, *streams, *ramp, *hold)
	case "probe":
		probeMode(*addr, *service, *rate, *duration, *timeout)
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", mode)
		os.Exit(1)
	}
}
