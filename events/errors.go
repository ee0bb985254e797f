package events

import (
	"errors"
	"fmt"
)

// Problem classifies why a message could not be decoded into an Event.
type Problem string

const (
	ProblemNotCloudEvent    Problem = "not a CloudEvent"
	ProblemMissingAttribute Problem = "missing attribute"
	ProblemInvalidAttribute Problem = "invalid attribute"
	ProblemSpecVersion      Problem = "unsupported specversion"
	ProblemUnknownType      Problem = "unknown type"
	ProblemContentType      Problem = "unsupported content type"
	ProblemInvalidJSON      Problem = "invalid JSON"
	ProblemSchemaViolation  Problem = "schema violation"
	ProblemPayloadMismatch  Problem = "payload does not fit its Go type"
)

// DecodeError says why a message is not a valid Tidemark event. It is
// permanent: redelivering the same bytes cannot help.
type DecodeError struct {
	Problem Problem
	// Attribute names the CloudEvents attribute or payload field at fault.
	Attribute string
	Detail    string
	Err       error
}

func (e *DecodeError) Error() string {
	msg := string(e.Problem)
	if e.Attribute != "" {
		msg += " " + e.Attribute
	}
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *DecodeError) Unwrap() error { return e.Err }

// ErrInvalidEvent is returned, wrapped, when an event about to be sent does
// not satisfy its own type's schema or lacks a required attribute.
var ErrInvalidEvent = errors.New("invalid event")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidEvent, fmt.Sprintf(format, args...))
}

// IsDecodeError reports whether err is, or wraps, a DecodeError.
func IsDecodeError(err error) bool {
	var de *DecodeError
	return errors.As(err, &de)
}
