package s3server

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/minio/minio-go/v7"
)

// The server stores and returns objects over plain HTTP and over TLS, and
// keeps them across a restart.
func TestServer(t *testing.T) {
	for _, tls := range []bool{false, true} {
		t.Run(map[bool]string{false: "http", true: "https"}[tls], func(t *testing.T) {
			s := Start(t, Options{TLS: tls})
			s.CreateBucket(t, "bucket")
			ctx := context.Background()
			data := bytes.Repeat([]byte("tidemark"), 1000)
			if _, err := s.Client(t).PutObject(ctx, "bucket", "x/y", bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
				t.Fatal(err)
			}
			s.Restart(t)
			obj, err := s.Client(t).GetObject(ctx, "bucket", "x/y", minio.GetObjectOptions{})
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(obj)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read back %d bytes, %v", len(got), err)
			}
		})
	}
}
