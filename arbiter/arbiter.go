// Package arbiter decides which node may run a service, for both roles: the primary
// takes a service's key before it starts or restores the program, a standby before it
// goes live, and a node that loses the key (its lease expired while it was cut off
// from the arbiter) must stop at once. This is VMware FT's test-and-set, kept in etcd.
package arbiter

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// ErrLeaseLost means this node no longer holds the right to run the service.
var ErrLeaseLost = errors.New("arbiter lease lost")

// Arbiter decides which node may run a service: the live copy holds a leased key;
// another node may go live only once it holds the key, which it can only get after
// the holder's lease expired.
type Arbiter interface {
	// Acquire blocks until this node holds service's key, or ctx ends.
	Acquire(ctx context.Context, service, node string) (Lease, error)
	Close() error
}

// Lease is a held key.
type Lease interface {
	// Lost is closed when the lease can no longer be kept alive (expired, revoked, or
	// the arbiter unreachable for longer than its TTL).
	Lost() <-chan struct{}
	Release() error
}

// TTL is how long a lease outlives its holder's last keep-alive.
const TTL = 2 * time.Second

// Open parses --arbiter: "none" (nil: no arbiter) or "etcd:HOST:PORT[,HOST:PORT]".
func Open(spec string, ttl time.Duration) (Arbiter, error) {
	switch {
	case spec == "" || spec == "none":
		return nil, nil
	case strings.HasPrefix(spec, "etcd:"):
		var eps []string
		for _, e := range strings.Split(strings.TrimPrefix(spec, "etcd:"), ",") {
			if e = strings.TrimSpace(e); e != "" {
				if !strings.Contains(e, "://") {
					e = "http://" + e
				}
				eps = append(eps, e)
			}
		}
		if len(eps) == 0 {
			return nil, fmt.Errorf("--arbiter %q names no etcd endpoint", spec)
		}
		cl, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 3 * time.Second})
		if err != nil {
			return nil, fmt.Errorf("etcd arbiter %v: %w", eps, err)
		}
		if ttl <= 0 {
			ttl = TTL
		}
		return &etcdArbiter{cl: cl, ttl: ttl}, nil
	}
	return nil, fmt.Errorf("--arbiter %q: use none or etcd:HOST:PORT[,HOST:PORT...]", spec)
}

type etcdArbiter struct {
	cl  *clientv3.Client
	ttl time.Duration
}

func (a *etcdArbiter) Close() error { return a.cl.Close() }

func (a *etcdArbiter) Acquire(ctx context.Context, service, node string) (Lease, error) {
	secs := int((a.ttl + time.Second - 1) / time.Second)
	sess, err := concurrency.NewSession(a.cl, concurrency.WithTTL(secs), concurrency.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("etcd session: %w", err)
	}
	m := concurrency.NewMutex(sess, "/ftrun/services/"+service)
	if err := m.Lock(ctx); err != nil {
		sess.Close()
		return nil, fmt.Errorf("take the key of %q: %w", service, err)
	}
	return &etcdLease{sess: sess, m: m}, nil
}

type etcdLease struct {
	sess *concurrency.Session
	m    *concurrency.Mutex
}

func (l *etcdLease) Lost() <-chan struct{} { return l.sess.Done() }

func (l *etcdLease) Release() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := l.m.Unlock(ctx)
	return errors.Join(err, l.sess.Close())
}
