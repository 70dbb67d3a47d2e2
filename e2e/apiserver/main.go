// Command meshfed-apiserver is a real kube-apiserver (k8s.io/kubernetes, unmodified) with an
// optional embedded etcd, so the local fleet needs one binary per cluster and nothing from the OS.
//
// Embedded etcd is configured through environment variables, because every command-line flag
// belongs to kube-apiserver:
//
//	MESHFED_ETCD_DIR          data directory; when unset, no etcd is started (use --etcd-servers)
//	MESHFED_ETCD_CLIENT_URL   e.g. http://127.0.0.1:23790 (pass the same URL as --etcd-servers)
//	MESHFED_ETCD_PEER_URL     e.g. http://127.0.0.1:23800
//	MESHFED_ETCD_NO_FSYNC     "1" skips fsync: a throw-away test fleet, not durable storage
//
// And one setting for many API servers on one machine:
//
//	MESHFED_GC_SPREAD         a Go duration such as 2m: collect garbage at a random point of every
//	                          such period (see spreadCollections)
package main

import (
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"runtime"
	"time"

	_ "time/tzdata"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func mustURL(name string) url.URL {
	raw := os.Getenv(name)
	u, err := url.Parse(raw)
	if raw == "" || err != nil {
		fmt.Fprintf(os.Stderr, "meshfed-apiserver: %s must be a URL such as http://127.0.0.1:23790 (got %q)\n", name, raw)
		os.Exit(2)
	}
	return *u
}

func startEtcd(dir string) *embed.Etcd {
	cfg := embed.NewConfig()
	cfg.Name = "meshfed"
	cfg.Dir = dir
	cfg.LogLevel = "error"
	client, peer := mustURL("MESHFED_ETCD_CLIENT_URL"), mustURL("MESHFED_ETCD_PEER_URL")
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.UnsafeNoFsync = os.Getenv("MESHFED_ETCD_NO_FSYNC") == "1"
	etcd, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "meshfed-apiserver: embedded etcd failed to start: %v\n", err)
		os.Exit(1)
	}
	select {
	case <-etcd.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		fmt.Fprintln(os.Stderr, "meshfed-apiserver: embedded etcd not ready after 60s")
		os.Exit(1)
	}
	go func() {
		if err := <-etcd.Err(); err != nil {
			fmt.Fprintf(os.Stderr, "meshfed-apiserver: embedded etcd stopped: %v\n", err)
			os.Exit(1)
		}
	}()
	return etcd
}

// spreadCollections runs a garbage collection after a random half-to-whole `period`, for ever. Go forces a
// collection on any heap left alone for two minutes; the API servers of a dense fleet start together and
// idle alike, so their forced collections come due at the same instant (after start-up, and again after
// every fleet-wide burst of writes) and fifty of them at once hold a 2-core machine for seconds. With a
// period of two minutes or less, a collection of our own always comes first, at a time no other API
// server shares: the same work, never all at once.
func spreadCollections(period time.Duration) {
	for {
		time.Sleep(period/2 + rand.N(period/2))
		runtime.GC()
	}
}

func main() {
	if raw := os.Getenv("MESHFED_GC_SPREAD"); raw != "" {
		period, err := time.ParseDuration(raw)
		if err != nil || period < 2*time.Second {
			fmt.Fprintf(os.Stderr, "meshfed-apiserver: MESHFED_GC_SPREAD must be a duration of 2s or more, such as 2m (got %q)\n", raw)
			os.Exit(2)
		}
		go spreadCollections(period)
	}
	if dir := os.Getenv("MESHFED_ETCD_DIR"); dir != "" {
		defer startEtcd(dir).Close()
	}
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
