package csidriver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Version is reported by GetPluginInfo.
const Version = "v0.1.0-test"

func errAlreadyExists(msg string) error { return status.Error(codes.AlreadyExists, msg) }

func internal(err error) error { return status.Error(codes.Internal, err.Error()) }

// --- Identity ---

type identity struct {
	csi.UnimplementedIdentityServer
	d *Driver
}

func (s identity) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: s.d.name, VendorVersion: Version}, nil
}

func (s identity) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	svc := func(t csi.PluginCapability_Service_Type) *csi.PluginCapability {
		return &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: t}}}
	}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{
		svc(csi.PluginCapability_Service_CONTROLLER_SERVICE),
		svc(csi.PluginCapability_Service_GROUP_CONTROLLER_SERVICE),
	}}, nil
}

func (s identity) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// --- Controller ---

type controller struct {
	csi.UnimplementedControllerServer
	d *Driver
}

func (s controller) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

func checkCapabilities(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	for _, c := range caps {
		if c.GetMount() == nil {
			return status.Error(codes.InvalidArgument, "only filesystem (mount) volumes are supported")
		}
	}
	return nil
}

func (s controller) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	size := req.GetCapacityRange().GetRequiredBytes()
	if size == 0 {
		size = req.GetCapacityRange().GetLimitBytes()
	}
	var from *record
	src := req.GetVolumeContentSource()
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	switch {
	case src.GetSnapshot() != nil:
		r, err := s.d.load(src.GetSnapshot().GetSnapshotId())
		if err != nil || r.Kind != "snapshot" {
			return nil, status.Errorf(codes.NotFound, "snapshot %s not found", src.GetSnapshot().GetSnapshotId())
		}
		from = r
	case src.GetVolume() != nil:
		r, err := s.d.load(src.GetVolume().GetVolumeId())
		if err != nil || r.Kind != "volume" {
			return nil, status.Errorf(codes.NotFound, "volume %s not found", src.GetVolume().GetVolumeId())
		}
		from = r
	}
	if from != nil && from.Size > size {
		size = from.Size
	}
	vid := id("volume", req.GetName())
	if r, err := s.d.load(vid); err == nil {
		if r.Size != size || (from != nil && r.Source != from.ID) {
			return nil, errAlreadyExists(fmt.Sprintf("volume %q exists with other parameters", req.GetName()))
		}
		return &csi.CreateVolumeResponse{Volume: volume(r, src)}, nil
	}
	r := &record{ID: vid, Name: req.GetName(), Kind: "volume", Size: size}
	dst := s.d.dataPath(r)
	if err := os.RemoveAll(dst); err != nil {
		return nil, internal(err)
	}
	if from != nil {
		r.Source = from.ID
		if err := CloneTree(s.d.dataPath(from), dst); err != nil {
			_ = os.RemoveAll(dst)
			return nil, internal(err)
		}
	} else if err := os.Mkdir(dst, 0o777); err != nil {
		return nil, internal(err)
	} else if err := os.Chmod(dst, 0o777); err != nil { // the umask must not make it unwritable for non-root pods
		return nil, internal(err)
	}
	if err := s.d.save(r); err != nil {
		return nil, internal(err)
	}
	return &csi.CreateVolumeResponse{Volume: volume(r, src)}, nil
}

func volume(r *record, src *csi.VolumeContentSource) *csi.Volume {
	return &csi.Volume{VolumeId: r.ID, CapacityBytes: r.Size, ContentSource: src}
}

func (s controller) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	r, err := s.d.load(req.GetVolumeId())
	if errors.Is(err, os.ErrNotExist) {
		return &csi.DeleteVolumeResponse{}, nil
	}
	if err != nil {
		return nil, internal(err)
	}
	if r.Kind != "volume" {
		return nil, status.Errorf(codes.NotFound, "%s is not a volume", r.ID)
	}
	if err := s.d.remove(r); err != nil {
		return nil, internal(err)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func (s controller) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if _, err := s.d.load(req.GetVolumeId()); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume %s not found", req.GetVolumeId())
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext: req.GetVolumeContext(), VolumeCapabilities: req.GetVolumeCapabilities(), Parameters: req.GetParameters(),
	}}, nil
}

func (s controller) CreateSnapshot(_ context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" || req.GetSourceVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "name and source volume id are required")
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	v, err := s.d.load(req.GetSourceVolumeId())
	if err != nil || v.Kind != "volume" {
		return nil, status.Errorf(codes.NotFound, "volume %s not found", req.GetSourceVolumeId())
	}
	r, err := s.d.snapshotVolume(req.GetName(), v, "")
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		return nil, internal(err)
	}
	return &csi.CreateSnapshotResponse{Snapshot: snapshot(r)}, nil
}

func snapshot(r *record) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId: r.ID, SourceVolumeId: r.Source, SizeBytes: r.Size, GroupSnapshotId: r.Group,
		CreationTime: timestamppb.New(r.CreatedAt), ReadyToUse: true,
	}
}

func (s controller) DeleteSnapshot(_ context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot id is required")
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	r, err := s.d.load(req.GetSnapshotId())
	if errors.Is(err, os.ErrNotExist) {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	if err != nil {
		return nil, internal(err)
	}
	if r.Kind != "snapshot" {
		return nil, status.Errorf(codes.NotFound, "%s is not a snapshot", r.ID)
	}
	if err := s.d.remove(r); err != nil {
		return nil, internal(err)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// --- Group controller ---

type groupController struct {
	csi.UnimplementedGroupControllerServer
	d *Driver
}

func (s groupController) GroupControllerGetCapabilities(context.Context, *csi.GroupControllerGetCapabilitiesRequest) (*csi.GroupControllerGetCapabilitiesResponse, error) {
	return &csi.GroupControllerGetCapabilitiesResponse{Capabilities: []*csi.GroupControllerServiceCapability{{
		Type: &csi.GroupControllerServiceCapability_Rpc{Rpc: &csi.GroupControllerServiceCapability_RPC{
			Type: csi.GroupControllerServiceCapability_RPC_CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT,
		}},
	}}}, nil
}

func (s groupController) CreateVolumeGroupSnapshot(_ context.Context, req *csi.CreateVolumeGroupSnapshotRequest) (*csi.CreateVolumeGroupSnapshotResponse, error) {
	if req.GetName() == "" || len(req.GetSourceVolumeIds()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "name and source volume ids are required")
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	gid := id("group", req.GetName())
	if g, err := s.d.load(gid); err == nil {
		if !sameSet(g.sources(s.d), req.GetSourceVolumeIds()) {
			return nil, errAlreadyExists(fmt.Sprintf("group snapshot %q exists for other volumes", req.GetName()))
		}
		return s.response(g)
	}
	var vols []*record
	for _, vid := range req.GetSourceVolumeIds() {
		v, err := s.d.load(vid)
		if err != nil || v.Kind != "volume" {
			return nil, status.Errorf(codes.NotFound, "volume %s not found", vid)
		}
		vols = append(vols, v)
	}
	g := &record{ID: gid, Name: req.GetName(), Kind: "group"}
	for _, v := range vols {
		sn, err := s.d.snapshotVolume(req.GetName()+"/"+v.ID, v, gid)
		if err != nil {
			return nil, internal(err)
		}
		g.Members = append(g.Members, sn.ID)
		g.Size += sn.Size
		if sn.CreatedAt.After(g.CreatedAt) {
			g.CreatedAt = sn.CreatedAt
		}
	}
	if err := s.d.save(g); err != nil {
		return nil, internal(err)
	}
	return s.response(g)
}

// sources lists the volumes a group snapshot's members were taken of.
func (g *record) sources(d *Driver) []string {
	var out []string
	for _, m := range g.Members {
		if r, err := d.load(m); err == nil {
			out = append(out, r.Source)
		}
	}
	return out
}

func sameSet(h, want []string) bool {
	if len(h) != len(want) {
		return false
	}
	set := map[string]bool{}
	for _, x := range h {
		set[x] = true
	}
	for _, x := range want {
		if !set[x] {
			return false
		}
	}
	return true
}

func (s groupController) response(g *record) (*csi.CreateVolumeGroupSnapshotResponse, error) {
	vgs, err := s.group(g)
	if err != nil {
		return nil, err
	}
	return &csi.CreateVolumeGroupSnapshotResponse{GroupSnapshot: vgs}, nil
}

func (s groupController) group(g *record) (*csi.VolumeGroupSnapshot, error) {
	vgs := &csi.VolumeGroupSnapshot{GroupSnapshotId: g.ID, CreationTime: timestamppb.New(g.CreatedAt), ReadyToUse: true}
	for _, m := range g.Members {
		r, err := s.d.load(m)
		if err != nil {
			return nil, internal(fmt.Errorf("member %s of group snapshot %s: %w", m, g.ID, err))
		}
		vgs.Snapshots = append(vgs.Snapshots, snapshot(r))
	}
	return vgs, nil
}

func (s groupController) GetVolumeGroupSnapshot(_ context.Context, req *csi.GetVolumeGroupSnapshotRequest) (*csi.GetVolumeGroupSnapshotResponse, error) {
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	g, err := s.d.load(req.GetGroupSnapshotId())
	if err != nil || g.Kind != "group" {
		return nil, status.Errorf(codes.NotFound, "group snapshot %s not found", req.GetGroupSnapshotId())
	}
	vgs, err := s.group(g)
	if err != nil {
		return nil, err
	}
	return &csi.GetVolumeGroupSnapshotResponse{GroupSnapshot: vgs}, nil
}

// DeleteVolumeGroupSnapshot deletes the group and its member snapshots,
// including members already deleted one by one (the call is idempotent).
func (s groupController) DeleteVolumeGroupSnapshot(_ context.Context, req *csi.DeleteVolumeGroupSnapshotRequest) (*csi.DeleteVolumeGroupSnapshotResponse, error) {
	if req.GetGroupSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "group snapshot id is required")
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	g, err := s.d.load(req.GetGroupSnapshotId())
	if errors.Is(err, os.ErrNotExist) {
		return &csi.DeleteVolumeGroupSnapshotResponse{}, nil
	}
	if err != nil {
		return nil, internal(err)
	}
	if g.Kind != "group" {
		return nil, status.Errorf(codes.NotFound, "%s is not a group snapshot", g.ID)
	}
	members := append([]string{}, g.Members...)
	members = append(members, req.GetSnapshotIds()...)
	for _, m := range members {
		r, err := s.d.load(m)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, internal(err)
		}
		if r.Kind != "snapshot" || r.Group != g.ID {
			return nil, status.Errorf(codes.InvalidArgument, "snapshot %s is not a member of group snapshot %s", m, g.ID)
		}
		if err := s.d.remove(r); err != nil {
			return nil, internal(err)
		}
	}
	if err := s.d.remove(g); err != nil {
		return nil, internal(err)
	}
	return &csi.DeleteVolumeGroupSnapshotResponse{}, nil
}

// --- Node ---

type node struct {
	csi.UnimplementedNodeServer
	d *Driver
}

func (s node) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: s.d.nodeID}, nil
}

func (s node) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{}, nil
}

func (s node) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	target := req.GetTargetPath()
	if req.GetVolumeId() == "" || target == "" || req.GetVolumeCapability() == nil {
		return nil, status.Error(codes.InvalidArgument, "volume id, target path and capability are required")
	}
	if req.GetVolumeCapability().GetMount() == nil {
		return nil, status.Error(codes.InvalidArgument, "only filesystem (mount) volumes are supported")
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	v, err := s.d.load(req.GetVolumeId())
	if err != nil || v.Kind != "volume" {
		return nil, status.Errorf(codes.NotFound, "volume %s not found", req.GetVolumeId())
	}
	mounted, err := isMountPoint(target)
	if err != nil {
		return nil, internal(err)
	}
	if mounted {
		return &csi.NodePublishVolumeResponse{}, nil
	}
	if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, internal(err)
	}
	if err := unix.Mount(s.d.dataPath(v), target, "", unix.MS_BIND, ""); err != nil {
		return nil, internal(fmt.Errorf("bind-mounting %s on %s: %w", s.d.dataPath(v), target, err))
	}
	if req.GetReadonly() {
		if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			_ = unix.Unmount(target, 0)
			return nil, internal(fmt.Errorf("read-only remount of %s: %w", target, err))
		}
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

func (s node) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	target := req.GetTargetPath()
	if req.GetVolumeId() == "" || target == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id and target path are required")
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	for {
		mounted, err := isMountPoint(target)
		if err != nil {
			return nil, internal(err)
		}
		if !mounted {
			break
		}
		if err := unix.Unmount(target, 0); err != nil {
			return nil, internal(fmt.Errorf("unmounting %s: %w", target, err))
		}
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, internal(err)
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// isMountPoint reports whether path is a mount point, by
// /proc/self/mountinfo: a bind mount of a directory of the same
// filesystem has the same device, so stat cannot tell.
func isMountPoint(path string) (bool, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return false, err
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescapeMountPath(fields[4]) == abs {
			return true, nil
		}
	}
	return false, sc.Err()
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space, …).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%o", &c); err == nil {
				b.WriteByte(byte(c))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
