package repository

import (
	"fmt"
	"runtime"
	"slices"

	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/compression"
	"github.com/kopia/kopia/repo/format"
	"github.com/kopia/kopia/repo/hashing"
	"github.com/kopia/kopia/repo/splitter"
	"github.com/kopia/kopia/snapshot/policy"
)

// Tuning are the performance settings of a repository. The zero value
// means Tidemark's defaults, which were chosen by measurement
// (docs/benchmarks.md, "services/datamover"); every value keeps the
// repository openable by the stock kopia CLI. Hash and Splitter apply when
// Open creates a repository (an existing one keeps its own); the others
// apply to each export.
type Tuning struct {
	// Hash is kopia's content hash, e.g. "BLAKE3-256-128".
	Hash string
	// Splitter is kopia's content-defined chunking, e.g.
	// "DYNAMIC-4M-BUZHASH".
	Splitter string
	// Compression is kopia's compressor of file data, e.g.
	// "zstd-fastest", or "none".
	Compression string
	// NeverCompress lists file extensions (".jpg") not compressed: their
	// content is compressed already.
	NeverCompress []string
	// ParallelFileReads is how many files an export reads and hashes at
	// once.
	ParallelFileReads int
	// ParallelUploadAboveSize splits a file bigger than this into parts
	// hashed in parallel (-1: never).
	ParallelUploadAboveSize int64
}

// DefaultTuning is what a zero Tuning means. Measured on 2 cores
// (docs/benchmarks.md): BLAKE3 hashes about twice as fast as kopia's
// default BLAKE2B; s2 compresses mixed data to about 70% for a third of
// zstd-fastest's CPU (zstd-fastest stores about 60%); a rolling hash other
// than buzhash, and splitting big files into parallel parts, were slower.
var DefaultTuning = Tuning{
	Hash:                    "BLAKE3-256-128",
	Splitter:                splitter.DefaultAlgorithm,
	Compression:             "s2-default",
	NeverCompress:           alreadyCompressed,
	ParallelFileReads:       runtime.NumCPU(),
	ParallelUploadAboveSize: 2 << 30,
}

// alreadyCompressed are extensions of files whose content is compressed
// (or encrypted) already: compressing them again costs CPU for nothing.
var alreadyCompressed = []string{
	".7z", ".avif", ".br", ".bz2", ".gz", ".heic", ".jpeg", ".jpg", ".lz4", ".mkv", ".mov", ".mp3", ".mp4",
	".ogg", ".png", ".rar", ".tgz", ".webm", ".webp", ".xz", ".zip", ".zst",
}

// withDefaults fills the zero fields of t from DefaultTuning.
func (t Tuning) withDefaults() Tuning {
	d := DefaultTuning
	if t.Hash == "" {
		t.Hash = d.Hash
	}
	if t.Splitter == "" {
		t.Splitter = d.Splitter
	}
	if t.Compression == "" {
		t.Compression = d.Compression
	}
	if t.NeverCompress == nil {
		t.NeverCompress = d.NeverCompress
	}
	if t.ParallelFileReads <= 0 {
		t.ParallelFileReads = d.ParallelFileReads
	}
	if t.ParallelUploadAboveSize == 0 {
		t.ParallelUploadAboveSize = d.ParallelUploadAboveSize
	}
	return t
}

func (t Tuning) validate() error {
	if !slices.Contains(hashing.SupportedAlgorithms(), t.Hash) {
		return fmt.Errorf("%w: hash %q: want one of %v", ErrInvalidConfig, t.Hash, hashing.SupportedAlgorithms())
	}
	if !slices.Contains(splitter.SupportedAlgorithms(), t.Splitter) {
		return fmt.Errorf("%w: splitter %q: want one of %v", ErrInvalidConfig, t.Splitter, splitter.SupportedAlgorithms())
	}
	if _, ok := compression.ByName[compression.Name(t.Compression)]; !ok && t.Compression != "none" {
		names := []string{"none"}
		for n := range compression.ByName {
			names = append(names, string(n))
		}
		slices.Sort(names)
		return fmt.Errorf("%w: compression %q: want one of %v", ErrInvalidConfig, t.Compression, names)
	}
	return nil
}

// newRepositoryOptions are the format of a repository Tidemark creates:
// kopia's defaults (AES256-GCM-HMAC-SHA256, format version 3) with the
// tuned hash and splitter.
func (t Tuning) newRepositoryOptions() *repo.NewRepositoryOptions {
	return &repo.NewRepositoryOptions{
		BlockFormat:  format.ContentFormat{Hash: t.Hash},
		ObjectFormat: format.ObjectFormat{Splitter: t.Splitter},
	}
}

// exportPolicy is the policy of every export: everything in the volume is
// kept (no .kopiaignore, cache directories included), file data is
// compressed as tuned, unknown entry types (sockets, fifos) are skipped as
// kopia cannot store them, and any error fails the export.
func (t Tuning) exportPolicy() *policy.Tree {
	p := *policy.DefaultPolicy
	p.FilesPolicy = policy.FilesPolicy{IgnoreCacheDirectories: policy.NewOptionalBool(false)}
	p.CompressionPolicy = policy.CompressionPolicy{
		CompressorName: compression.Name(t.Compression),
		NeverCompress:  slices.Sorted(slices.Values(t.NeverCompress)),
	}
	p.ErrorHandlingPolicy = policy.ErrorHandlingPolicy{
		IgnoreFileErrors:      policy.NewOptionalBool(false),
		IgnoreDirectoryErrors: policy.NewOptionalBool(false),
		IgnoreUnknownTypes:    policy.NewOptionalBool(true),
	}
	up := policy.OptionalInt(t.ParallelFileReads)
	above := policy.OptionalInt64(t.ParallelUploadAboveSize)
	if t.ParallelUploadAboveSize < 0 {
		above = 1 << 62
	}
	p.UploadPolicy = policy.UploadPolicy{
		MaxParallelSnapshots:    p.UploadPolicy.MaxParallelSnapshots,
		MaxParallelFileReads:    &up,
		ParallelUploadAboveSize: &above,
	}
	return policy.BuildTree(nil, &p)
}
