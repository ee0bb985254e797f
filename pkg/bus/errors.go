package bus

import (
	"errors"
	"fmt"
)

var (
	// ErrNotConnected is returned when the NATS connection is closed.
	ErrNotConnected = errors.New("bus: not connected to NATS")
	// ErrTopology is returned, wrapped, when a stream, consumer or bucket
	// cannot be created or does not match its declaration.
	ErrTopology = errors.New("bus: topology")
	// ErrInvalidConsumer is returned, wrapped, for a ConsumerSpec that fails Validate.
	ErrInvalidConsumer = errors.New("bus: invalid consumer spec")
)

// permanentError marks a handler error that no retry can fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as one that retrying cannot fix (bad input, a missing
// target): the message goes to dead letter at once instead of being
// redelivered MaxDeliver times.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// Permanentf is Permanent(fmt.Errorf(format, args...)).
func Permanentf(format string, args ...any) error {
	return Permanent(fmt.Errorf(format, args...))
}

// IsPermanent reports whether err, or an error it wraps, was marked Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}
