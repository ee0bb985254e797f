package csidriver

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type clients struct {
	id    csi.IdentityClient
	ctl   csi.ControllerClient
	group csi.GroupControllerClient
	node  csi.NodeClient
	reg   registerapi.RegistrationClient
	srv   *Server
	root  string
}

// start serves a driver on real unix sockets in a temporary directory and
// connects real gRPC clients to them.
func start(t *testing.T) *clients {
	t.Helper()
	// Unix socket paths are limited to 108 bytes; t.TempDir() can be longer.
	sockDir, err := os.MkdirTemp("", "csid")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	root := t.TempDir()
	d, err := New(Config{NodeID: "node-1", Root: root})
	if err != nil {
		t.Fatal(err)
	}
	endpoint := filepath.Join(sockDir, "csi.sock")
	srv, ls, err := d.Listen(endpoint, filepath.Join(sockDir, "reg"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ls) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	dial := func(path string) *grpc.ClientConn {
		c, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	c := dial(endpoint)
	return &clients{
		id: csi.NewIdentityClient(c), ctl: csi.NewControllerClient(c), group: csi.NewGroupControllerClient(c),
		node: csi.NewNodeClient(c), reg: registerapi.NewRegistrationClient(dial(filepath.Join(sockDir, "reg", DefaultName+"-reg.sock"))),
		srv: srv, root: root,
	}
}

var mountCap = []*csi.VolumeCapability{{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func (c *clients) createVolume(t *testing.T, name string, src *csi.VolumeContentSource) *csi.Volume {
	t.Helper()
	r, err := c.ctl.CreateVolume(ctx(t), &csi.CreateVolumeRequest{
		Name: name, VolumeCapabilities: mountCap, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}, VolumeContentSource: src,
	})
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", name, err)
	}
	return r.Volume
}

func (c *clients) volumeDir(id string) string { return filepath.Join(c.root, "volumes", id) }

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o640); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestIdentityAnnouncesControllerAndGroupController(t *testing.T) {
	c := start(t)
	info, err := c.id.GetPluginInfo(ctx(t), &csi.GetPluginInfoRequest{})
	if err != nil || info.Name != DefaultName {
		t.Fatalf("GetPluginInfo = %v, %v", info, err)
	}
	caps, err := c.id.GetPluginCapabilities(ctx(t), &csi.GetPluginCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[csi.PluginCapability_Service_Type]bool{}
	for _, cp := range caps.Capabilities {
		got[cp.GetService().GetType()] = true
	}
	if !got[csi.PluginCapability_Service_CONTROLLER_SERVICE] || !got[csi.PluginCapability_Service_GROUP_CONTROLLER_SERVICE] {
		t.Fatalf("capabilities %v lack the controller or group controller service", caps.Capabilities)
	}
	gcaps, err := c.group.GroupControllerGetCapabilities(ctx(t), &csi.GroupControllerGetCapabilitiesRequest{})
	if err != nil || len(gcaps.Capabilities) != 1 {
		t.Fatalf("GroupControllerGetCapabilities = %v, %v", gcaps, err)
	}
	if p, err := c.id.Probe(ctx(t), &csi.ProbeRequest{}); err != nil || !p.Ready.GetValue() {
		t.Fatalf("Probe = %v, %v", p, err)
	}
}

func TestVolumeSnapshotAndRestore(t *testing.T) {
	c := start(t)
	v := c.createVolume(t, "pvc-1", nil)
	if again := c.createVolume(t, "pvc-1", nil); again.VolumeId != v.VolumeId {
		t.Fatalf("CreateVolume is not idempotent: %s then %s", v.VolumeId, again.VolumeId)
	}
	dir := c.volumeDir(v.VolumeId)
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "sub", "data"), "before")
	if err := os.Symlink("sub/data", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}

	snap, err := c.ctl.CreateSnapshot(ctx(t), &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: v.VolumeId})
	if err != nil {
		t.Fatal(err)
	}
	if !snap.Snapshot.ReadyToUse || snap.Snapshot.SourceVolumeId != v.VolumeId || snap.Snapshot.SizeBytes != 1<<20 {
		t.Fatalf("snapshot %v", snap.Snapshot)
	}
	again, err := c.ctl.CreateSnapshot(ctx(t), &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: v.VolumeId})
	if err != nil || again.Snapshot.SnapshotId != snap.Snapshot.SnapshotId {
		t.Fatalf("CreateSnapshot is not idempotent: %v, %v", again, err)
	}
	other := c.createVolume(t, "pvc-2", nil)
	_, err = c.ctl.CreateSnapshot(ctx(t), &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: other.VolumeId})
	if status.Code(err) != codes.AlreadyExists {
		t.Fatalf("same snapshot name, other volume: %v, want AlreadyExists", err)
	}

	write(t, filepath.Join(dir, "sub", "data"), "after")
	restored := c.createVolume(t, "pvc-restored", &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.Snapshot.SnapshotId},
	}})
	rdir := c.volumeDir(restored.VolumeId)
	if got := read(t, filepath.Join(rdir, "link")); got != "before" {
		t.Fatalf("restored volume reads %q through its symlink, want the snapshot's %q", got, "before")
	}
	if fi, err := os.Stat(filepath.Join(rdir, "sub")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("restored directory mode: %v, %v", fi, err)
	}
	if fi, err := os.Stat(filepath.Join(rdir, "sub", "data")); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("restored file mode: %v, %v", fi, err)
	}

	if _, err := c.ctl.CreateVolume(ctx(t), &csi.CreateVolumeRequest{Name: "pvc-x", VolumeCapabilities: mountCap,
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "snap-missing"}}}}); status.Code(err) != codes.NotFound {
		t.Fatalf("volume from a missing snapshot: %v, want NotFound", err)
	}

	for i := 0; i < 2; i++ { // deletes are idempotent
		if _, err := c.ctl.DeleteSnapshot(ctx(t), &csi.DeleteSnapshotRequest{SnapshotId: snap.Snapshot.SnapshotId}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.ctl.DeleteVolume(ctx(t), &csi.DeleteVolumeRequest{VolumeId: v.VolumeId}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("deleted volume's directory: %v", err)
	}
	if got := read(t, filepath.Join(rdir, "sub", "data")); got != "before" {
		t.Fatalf("restored volume changed when its source went: %q", got)
	}
}

func TestGroupSnapshotOfTwoVolumes(t *testing.T) {
	c := start(t)
	data := c.createVolume(t, "data", nil)
	logs := c.createVolume(t, "logs", nil)
	write(t, filepath.Join(c.volumeDir(data.VolumeId), "rows"), "1,2,3")
	write(t, filepath.Join(c.volumeDir(logs.VolumeId), "wal"), "wal-3")

	req := &csi.CreateVolumeGroupSnapshotRequest{Name: "group-1", SourceVolumeIds: []string{data.VolumeId, logs.VolumeId}}
	g, err := c.group.CreateVolumeGroupSnapshot(ctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	gs := g.GroupSnapshot
	if !gs.ReadyToUse || len(gs.Snapshots) != 2 {
		t.Fatalf("group snapshot %v", gs)
	}
	bySource := map[string]*csi.Snapshot{}
	for _, s := range gs.Snapshots {
		if s.GroupSnapshotId != gs.GroupSnapshotId || !s.ReadyToUse {
			t.Fatalf("member %v of %s", s, gs.GroupSnapshotId)
		}
		bySource[s.SourceVolumeId] = s
	}
	again, err := c.group.CreateVolumeGroupSnapshot(ctx(t), req)
	if err != nil || again.GroupSnapshot.GroupSnapshotId != gs.GroupSnapshotId {
		t.Fatalf("CreateVolumeGroupSnapshot is not idempotent: %v, %v", again, err)
	}
	_, err = c.group.CreateVolumeGroupSnapshot(ctx(t), &csi.CreateVolumeGroupSnapshotRequest{Name: "group-1", SourceVolumeIds: []string{data.VolumeId}})
	if status.Code(err) != codes.AlreadyExists {
		t.Fatalf("same group name, other volumes: %v, want AlreadyExists", err)
	}
	got, err := c.group.GetVolumeGroupSnapshot(ctx(t), &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: gs.GroupSnapshotId})
	if err != nil || len(got.GroupSnapshot.Snapshots) != 2 {
		t.Fatalf("GetVolumeGroupSnapshot = %v, %v", got, err)
	}

	write(t, filepath.Join(c.volumeDir(data.VolumeId), "rows"), "1,2,3,4")
	for src, file := range map[string]string{data.VolumeId: "rows", logs.VolumeId: "wal"} {
		v := c.createVolume(t, "restore-"+file, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: bySource[src].SnapshotId},
		}})
		want := map[string]string{"rows": "1,2,3", "wal": "wal-3"}[file]
		if got := read(t, filepath.Join(c.volumeDir(v.VolumeId), file)); got != want {
			t.Fatalf("volume restored from the group's %s snapshot reads %q, want %q", file, got, want)
		}
	}

	for i := 0; i < 2; i++ {
		if _, err := c.group.DeleteVolumeGroupSnapshot(ctx(t), &csi.DeleteVolumeGroupSnapshotRequest{GroupSnapshotId: gs.GroupSnapshotId}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.group.GetVolumeGroupSnapshot(ctx(t), &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: gs.GroupSnapshotId}); status.Code(err) != codes.NotFound {
		t.Fatalf("deleted group snapshot: %v, want NotFound", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(c.root, "snapshots")); len(entries) != 0 {
		t.Fatalf("member snapshots left after the group's deletion: %v", entries)
	}
}

func TestNodePublishBindMounts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("bind mounts need root")
	}
	c := start(t)
	v := c.createVolume(t, "pvc-mounted", nil)
	target := filepath.Join(t.TempDir(), "pods", "uid", "volumes", "mount")
	pub := &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId, TargetPath: target, VolumeCapability: mountCap[0]}
	for i := 0; i < 2; i++ { // a second publish is a no-op, not a second mount
		if _, err := c.node.NodePublishVolume(ctx(t), pub); err != nil {
			t.Fatal(err)
		}
	}
	write(t, filepath.Join(target, "f"), "through the mount")
	if got := read(t, filepath.Join(c.volumeDir(v.VolumeId), "f")); got != "through the mount" {
		t.Fatalf("volume reads %q", got)
	}
	for i := 0; i < 2; i++ {
		if _, err := c.node.NodeUnpublishVolume(ctx(t), &csi.NodeUnpublishVolumeRequest{VolumeId: v.VolumeId, TargetPath: target}); err != nil {
			t.Fatal(err)
		}
	}
	if mounted, _ := isMountPoint(target); mounted {
		t.Fatal("still mounted after NodeUnpublishVolume")
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatalf("target left behind: %v", err)
	}

	ro := &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId, TargetPath: target, VolumeCapability: mountCap[0], Readonly: true}
	if _, err := c.node.NodePublishVolume(ctx(t), ro); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = c.node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: v.VolumeId, TargetPath: target})
	})
	if err := os.WriteFile(filepath.Join(target, "g"), nil, 0o644); err == nil {
		t.Fatal("wrote through a read-only publish")
	}
	info, err := c.node.NodeGetInfo(ctx(t), &csi.NodeGetInfoRequest{})
	if err != nil || info.NodeId != "node-1" {
		t.Fatalf("NodeGetInfo = %v, %v", info, err)
	}
}

func TestKubeletRegistration(t *testing.T) {
	c := start(t)
	info, err := c.reg.GetInfo(ctx(t), &registerapi.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != registerapi.CSIPlugin || info.Name != DefaultName || info.Endpoint == "" || len(info.SupportedVersions) == 0 {
		t.Fatalf("GetInfo = %v", info)
	}
	if _, err := c.reg.NotifyRegistrationStatus(ctx(t), &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-c.srv.Registered:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no registration verdict")
	}
}
