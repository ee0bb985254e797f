package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
)

// dataVersion changes whenever the generated data sets change, so a
// cached copy of an older generator is made again.
const dataVersion = "1"

// dataset is a generated tree benchmarked as one volume.
type dataset struct {
	Name  string
	Dir   string
	Files int
	Bytes int64
}

// words is the vocabulary of the text-like content.
var words = strings.Fields(`the of and to in is was for on that with by as at from his it an were are which this be or has had
not but first one their its new after who they have her she two been other when there all during into school time may years
more most only over city some world would where later up such used many can state about national out known university united
then made customer order invoice amount status shipped pending paid refund warehouse item quantity price total tax session
user login error warning info debug request response latency backend frontend database index table row page commit rollback`)

// writer fills files with deterministic content of three kinds: text
// (compressible several times over), random bytes (incompressible, like
// media or encrypted data) and zeros (free pages).
type writer struct {
	rng *rand.Rand
	buf bytes.Buffer
}

func newWriter(seed uint64) *writer {
	var key [32]byte
	key[0], key[1] = byte(seed), byte(seed>>8)
	return &writer{rng: rand.New(rand.NewChaCha8(key))}
}

func (w *writer) random(n int) []byte {
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := w.rng.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

func (w *writer) text(n int) []byte {
	w.buf.Reset()
	for w.buf.Len() < n {
		switch w.rng.IntN(12) {
		case 0:
			fmt.Fprintf(&w.buf, "%d-%02d-%02dT%02d:%02d:%02d.%03dZ ", 2020+w.rng.IntN(6), 1+w.rng.IntN(12), 1+w.rng.IntN(28),
				w.rng.IntN(24), w.rng.IntN(60), w.rng.IntN(60), w.rng.IntN(1000))
		case 1:
			fmt.Fprintf(&w.buf, "id=%d ", w.rng.Uint32())
		case 2:
			w.buf.WriteByte('\n')
		default:
			w.buf.WriteString(words[w.rng.IntN(len(words))])
			w.buf.WriteByte(' ')
		}
	}
	return append([]byte(nil), w.buf.Bytes()[:n]...)
}

// page is a database page: a quarter free (zeros), half rows of text, a
// quarter random (compressed or encrypted columns).
func (w *writer) page(n int) []byte {
	switch r := w.rng.IntN(4); r {
	case 0:
		return make([]byte, n)
	case 1:
		return w.random(n)
	default:
		return w.text(n)
	}
}

func writeFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}

// mixedData is 1 GiB that looks like a volume holding a database and
// files: 576 MiB of database files in 8 KiB pages, 256 MiB of
// incompressible media, 128 MiB of logs and 64 MiB of small documents.
func mixedData(dir string) error {
	w := newWriter(1)
	for i := range 6 {
		var f bytes.Buffer
		for range 96 << 20 / 8192 {
			f.Write(w.page(8192))
		}
		if err := writeFile(filepath.Join(dir, "db", fmt.Sprintf("tablespace%02d.ibd", i)), f.Bytes()); err != nil {
			return err
		}
	}
	for i := range 64 {
		if err := writeFile(filepath.Join(dir, "media", fmt.Sprintf("%02d", i%8), fmt.Sprintf("img%04d.jpg", i)), w.random(4<<20)); err != nil {
			return err
		}
	}
	for i := range 64 {
		if err := writeFile(filepath.Join(dir, "logs", fmt.Sprintf("app-%03d.log", i)), w.text(2<<20)); err != nil {
			return err
		}
	}
	for i := range 2048 {
		if err := writeFile(filepath.Join(dir, "docs", fmt.Sprintf("%02d", i%32), fmt.Sprintf("doc%05d.json", i)), w.text(32<<10)); err != nil {
			return err
		}
	}
	return nil
}

// smallFiles is 10,000 files of 512 B to 8 KiB in 100 directories.
func smallFiles(dir string) error {
	w := newWriter(2)
	for i := range 10000 {
		n := 512 + w.rng.IntN(8<<10-512)
		if err := writeFile(filepath.Join(dir, fmt.Sprintf("d%03d", i%100), fmt.Sprintf("f%05d.txt", i)), w.text(n)); err != nil {
			return err
		}
	}
	return nil
}

// manyVolumes is n volumes of one 1 MiB file each (half text, half
// random), under dir/<i>.
func manyVolumes(dir string, n int) error {
	w := newWriter(3)
	for i := range n {
		data := append(w.text(512<<10), w.random(512<<10)...)
		if err := writeFile(filepath.Join(dir, fmt.Sprintf("vol%04d", i), "data.bin"), data); err != nil {
			return err
		}
	}
	return nil
}

// ensure generates a data set into root/name unless it is there already.
func ensure(root, name string, gen func(string) error) (dataset, error) {
	dir := filepath.Join(root, name)
	marker := filepath.Join(root, name+".done")
	if b, err := os.ReadFile(marker); err != nil || string(b) != dataVersion {
		if err := os.RemoveAll(dir); err != nil {
			return dataset{}, err
		}
		logf("generating %s into %s", name, dir)
		if err := gen(dir); err != nil {
			return dataset{}, err
		}
		if err := os.WriteFile(marker, []byte(dataVersion), 0o644); err != nil {
			return dataset{}, err
		}
	}
	ds := dataset{Name: name, Dir: dir}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		ds.Files++
		ds.Bytes += fi.Size()
		return nil
	})
	return ds, err
}
