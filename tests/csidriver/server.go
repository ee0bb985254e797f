package csidriver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// Server serves a Driver's CSI services on a unix socket, and (if asked)
// the kubelet's plugin-registration service on another.
type Server struct {
	d        *Driver
	csi, reg *grpc.Server
	// Registered receives the kubelet's verdict on the registration
	// (nil error: accepted). Buffered; later verdicts are dropped.
	Registered chan error
}

// Listen creates the CSI socket at endpoint and, if registrationDir is
// not empty, the registration socket <registrationDir>/<name>-reg.sock
// announcing endpoint to the kubelet. Serve must follow.
func (d *Driver) Listen(endpoint, registrationDir string) (*Server, []net.Listener, error) {
	s := &Server{d: d, csi: grpc.NewServer(), Registered: make(chan error, 1)}
	csi.RegisterIdentityServer(s.csi, identity{d: d})
	csi.RegisterControllerServer(s.csi, controller{d: d})
	csi.RegisterGroupControllerServer(s.csi, groupController{d: d})
	csi.RegisterNodeServer(s.csi, node{d: d})
	l, err := listenUnix(endpoint)
	if err != nil {
		return nil, nil, err
	}
	ls := []net.Listener{l}
	if registrationDir != "" {
		s.reg = grpc.NewServer()
		registerapi.RegisterRegistrationServer(s.reg, registration{name: d.name, endpoint: endpoint, done: s.Registered})
		rl, err := listenUnix(filepath.Join(registrationDir, d.name+"-reg.sock"))
		if err != nil {
			l.Close()
			return nil, nil, err
		}
		ls = append(ls, rl)
	}
	return s, ls, nil
}

// Serve serves until ctx ends, then stops both servers.
func (s *Server) Serve(ctx context.Context, ls []net.Listener) error {
	errs := make(chan error, 2)
	go func() { errs <- s.csi.Serve(ls[0]) }()
	if s.reg != nil {
		go func() { errs <- s.reg.Serve(ls[1]) }()
	}
	select {
	case <-ctx.Done():
	case err := <-errs:
		s.stop()
		return err
	}
	s.stop()
	return nil
}

func (s *Server) stop() {
	s.csi.Stop()
	if s.reg != nil {
		s.reg.Stop()
	}
}

// listenUnix listens on path, replacing a socket left by a previous run.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	return l, nil
}

// registration answers the kubelet's plugin watcher, which finds the
// -reg.sock file, asks GetInfo, then connects to the CSI endpoint itself.
type registration struct {
	registerapi.UnimplementedRegistrationServer
	name, endpoint string
	done           chan error
}

func (r registration) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type: registerapi.CSIPlugin, Name: r.name, Endpoint: r.endpoint, SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (r registration) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	var err error
	if !st.PluginRegistered {
		err = fmt.Errorf("kubelet refused the registration: %s", st.Error)
	}
	select {
	case r.done <- err:
	default:
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}
