package bus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tidemark-dev/tidemark/events"
)

// BucketDumps is the object-store bucket through which a backup's logical
// dump streams pass from the hookrunner (which runs the dump command) to a
// data mover (which stores the stream in the repository), and a Kubernetes
// backup's captured objects from the coordinator. Restores stream the other
// way through a pipe (WritePipe), not this bucket. Objects are deleted once
// moved; the TTL removes leftovers of crashed runs.
const BucketDumps = "tidemark-dumps"

// DumpObject names the object holding one run's dump artifact. The
// hookrunner writes it (backup) or reads it (restore); a data mover reads
// or writes the other end.
func DumpObject(run events.RunID, artifact string) string {
	return "dumps/" + string(run) + "/" + artifact
}

// ErrObjectNotFound is returned for an object that does not exist.
var ErrObjectNotFound = errors.New("bus: object not found")

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Name   string
	Size   uint64
	Digest string
}

// Objects is the narrow object store services use for large streams.
type Objects interface {
	// Put stores everything r yields under name, replacing any object there.
	Put(ctx context.Context, name string, r io.Reader) (ObjectInfo, error)
	// Get streams an object; the caller closes it.
	Get(ctx context.Context, name string) (io.ReadCloser, error)
	Delete(ctx context.Context, name string) error
	// Stat describes an object; ErrObjectNotFound if there is none.
	Stat(ctx context.Context, name string) (ObjectInfo, error)
}

// ObjectBucketSpec declares one object-store bucket.
type ObjectBucketSpec struct {
	Name        string
	Description string
	TTL         time.Duration
}

type objects struct{ os jetstream.ObjectStore }

// ObjectStore opens a declared object-store bucket.
func (b *Bus) ObjectStore(ctx context.Context, bucket string) (Objects, error) {
	ctx, cancel := withDefaultTimeout(ctx, 10*time.Second)
	defer cancel()
	os, err := b.js.ObjectStore(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("%w: object bucket %s: %v", ErrTopology, bucket, err)
	}
	return objects{os}, nil
}

func (o objects) Put(ctx context.Context, name string, r io.Reader) (ObjectInfo, error) {
	info, err := o.os.Put(ctx, jetstream.ObjectMeta{Name: name}, r)
	if err != nil {
		return ObjectInfo{}, err
	}
	return ObjectInfo{Name: info.Name, Size: info.Size, Digest: info.Digest}, nil
}

func (o objects) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	// jetstream gives a context without a deadline its default API timeout
	// (5 s) and ties the whole read to it: any stream that takes longer to
	// consume (a dump being stored, or fed to pg_restore) would be cut off
	// as "incomplete (canceled)". The read lives as long as the caller's
	// context, or until Close.
	cancel := func() {}
	if _, ok := ctx.Deadline(); !ok {
		ctx, cancel = context.WithDeadline(ctx, time.Now().Add(objectReadLimit))
	}
	r, err := o.os.Get(ctx, name)
	if err != nil {
		cancel()
		if errors.Is(err, jetstream.ErrObjectNotFound) {
			return nil, fmt.Errorf("%w: %s", ErrObjectNotFound, name)
		}
		return nil, err
	}
	return &objectReader{ReadCloser: r, cancel: cancel}, nil
}

// objectReadLimit bounds a read whose caller set no deadline: longer than
// any dump takes to move, short enough that a forgotten reader is freed.
const objectReadLimit = 7 * 24 * time.Hour

type objectReader struct {
	io.ReadCloser
	cancel func()
}

func (r *objectReader) Close() error {
	err := r.ReadCloser.Close()
	r.cancel()
	return err
}

func (o objects) Stat(ctx context.Context, name string) (ObjectInfo, error) {
	info, err := o.os.GetInfo(ctx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return ObjectInfo{}, fmt.Errorf("%w: %s", ErrObjectNotFound, name)
	}
	if err != nil {
		return ObjectInfo{}, err
	}
	return ObjectInfo{Name: info.Name, Size: info.Size, Digest: info.Digest}, nil
}

func (o objects) Delete(ctx context.Context, name string) error {
	err := o.os.Delete(ctx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil
	}
	return err
}
