// Package csidriver is a CSI driver FOR TESTS ONLY. It lets a single-node
// test cluster (tools/cluster) provision volumes, snapshot them, snapshot
// several of them as a group (VolumeGroupSnapshot), and restore volumes
// from snapshots, with the real CSI sidecars (csi-provisioner,
// csi-snapshotter) and the real kubelet in front of it. No CSI driver for
// tests can be built from the Go module proxy (csi-driver-host-path and
// node-driver-registrar are refused), hence this one.
//
// What it does, all on one node, under Config.Root:
//   - a volume is a directory; capacity is recorded, not enforced;
//   - NodePublishVolume bind-mounts that directory at the target path;
//   - CreateSnapshot clones the directory: a reflink (FICLONE) per file
//     where the filesystem supports it, else a byte copy;
//   - CreateVolumeGroupSnapshot snapshots every listed volume in one call;
//   - CreateVolume from a snapshot (or from a volume) copies it back.
//
// A snapshot is NOT atomic: files are cloned one after another while the
// application may still be writing, so a snapshot is at best
// crash-consistent per file, and a group snapshot's members are taken one
// after the other. That is exactly why Tidemark's quiesce hooks (FTWRL,
// pg_backup_start) matter; tests that need a consistent snapshot must
// quiesce first, as they would on real storage that lacks atomic group
// snapshots.
//
// It also serves the kubelet's plugin-registration API, so the kubelet
// discovers it the way it discovers node-driver-registrar.
package csidriver

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// DefaultName is the driver (and StorageClass provisioner) name.
const DefaultName = "csi.test.tidemark.io"

// Config says where the driver keeps its state and who it is.
type Config struct {
	Name   string // driver name; DefaultName if empty
	NodeID string // the node's name as the kubelet registers it
	Root   string // volumes, snapshots and their metadata live here
}

// Driver holds the state shared by the CSI services.
type Driver struct {
	name, nodeID, root string
	// mu serialises every change: a test driver has no need for
	// concurrency, and this keeps idempotency checks trivially correct.
	mu sync.Mutex
}

// New prepares Root and returns the driver.
func New(c Config) (*Driver, error) {
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.NodeID == "" || c.Root == "" {
		return nil, errors.New("csidriver: NodeID and Root are required")
	}
	for _, d := range []string{"volumes", "snapshots", "groups", "meta"} {
		if err := os.MkdirAll(filepath.Join(c.Root, d), 0o755); err != nil {
			return nil, err
		}
	}
	return &Driver{name: c.Name, nodeID: c.NodeID, root: c.Root}, nil
}

// record is what the driver remembers of a volume, snapshot or group
// snapshot, kept as JSON in meta/<id>.json.
type record struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Kind      string    `json:"kind"` // "volume", "snapshot", "group"
	Size      int64     `json:"size"`
	Source    string    `json:"source,omitempty"` // snapshot: the volume; volume: the snapshot/volume it was made from
	Group     string    `json:"group,omitempty"`  // snapshot: its group snapshot
	Members   []string  `json:"members,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
}

// id derives an object's ID from its CO-chosen name, which makes every
// Create call idempotent without a name index: the same name is the same ID.
func id(kind, name string) string {
	sum := sha256.Sum256([]byte(kind + "\x00" + name))
	return kind[:4] + "-" + hex.EncodeToString(sum[:10])
}

func (d *Driver) metaPath(id string) string { return filepath.Join(d.root, "meta", id+".json") }

func (d *Driver) dataPath(r *record) string {
	switch r.Kind {
	case "volume":
		return filepath.Join(d.root, "volumes", r.ID)
	case "snapshot":
		return filepath.Join(d.root, "snapshots", r.ID)
	}
	return ""
}

func (d *Driver) load(id string) (*record, error) {
	b, err := os.ReadFile(d.metaPath(id))
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", d.metaPath(id), err)
	}
	return &r, nil
}

// save writes the record last, after the data: a record on disk means
// the object is complete.
func (d *Driver) save(r *record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := d.metaPath(r.ID) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, d.metaPath(r.ID))
}

func (d *Driver) remove(r *record) error {
	if err := os.Remove(d.metaPath(r.ID)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if p := d.dataPath(r); p != "" {
		return os.RemoveAll(p)
	}
	return nil
}

// snapshotVolume clones volume v into a new snapshot record named name.
func (d *Driver) snapshotVolume(name string, v *record, group string) (*record, error) {
	sid := id("snapshot", name)
	if r, err := d.load(sid); err == nil {
		if r.Source != v.ID {
			return nil, errAlreadyExists(fmt.Sprintf("snapshot %q exists for volume %s, not %s", name, r.Source, v.ID))
		}
		return r, nil
	}
	r := &record{ID: sid, Name: name, Kind: "snapshot", Size: v.Size, Source: v.ID, Group: group, CreatedAt: time.Now().UTC()}
	dst := d.dataPath(r)
	// A previous attempt may have died mid-copy.
	if err := os.RemoveAll(dst); err != nil {
		return nil, err
	}
	if err := CloneTree(d.dataPath(v), dst); err != nil {
		_ = os.RemoveAll(dst)
		return nil, err
	}
	if err := d.save(r); err != nil {
		return nil, err
	}
	return r, nil
}
