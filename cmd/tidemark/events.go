package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/tidemark-dev/tidemark/events"
	"github.com/tidemark-dev/tidemark/pkg/bus"
	"github.com/tidemark-dev/tidemark/pkg/cenats"
)

const defaultNATSURL = "nats://127.0.0.1:4222"

func newEventsCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Follow, publish and list Tidemark events",
	}
	cmd.AddCommand(newEventsTailCommand(), newEventsPublishCommand(), newEventsTypesCommand())
	return cmd
}

type tailOptions struct {
	nats        natsOptions
	typeGlob    string
	subjectGlob string
	output      string
	since       time.Duration
	limit       int
	deadLetters bool
}

func newEventsTailCommand() *cobra.Command {
	o := &tailOptions{}
	cmd := &cobra.Command{
		Use:   "tail",
		Short: "Follow the events stream live",
		Long: `Follow Tidemark's audit log (every fact every service emits) as it happens.

--since replays the recent past first. --type and --subject filter with globs
where * matches any run of characters and ? one character, so
--type 'io.tidemark.backup.*' shows the backup lifecycle and
--subject 'shop/*' everything about applications in namespace shop.
--dead-letters follows messages no consumer could handle instead, with why.`,
		Example: `  tidemark events tail
  tidemark events tail --since 1h --type 'io.tidemark.backup.*' -o json
  tidemark events tail --dead-letters`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.validate(); err != nil {
				return usageError{err}
			}
			return o.run(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	o.nats.register(cmd, defaultNATSURL, "NATS server URLs, comma-separated (a running `tidemark serve` listens on "+defaultNATSURL+")")
	f.StringVar(&o.typeGlob, "type", "*", "only events whose type matches this glob")
	f.StringVar(&o.subjectGlob, "subject", "*", "only events whose subject matches this glob")
	f.StringVarP(&o.output, "output", "o", "text", "output format: text or json (one structured CloudEvent per line)")
	f.DurationVar(&o.since, "since", 0, "replay events from this long ago before following (e.g. 10m, 24h)")
	f.IntVar(&o.limit, "limit", 0, "exit after printing this many events (0: follow until interrupted)")
	f.BoolVar(&o.deadLetters, "dead-letters", false, "follow the dead-letter stream instead of the events stream")
	return cmd
}

func (o *tailOptions) validate() error {
	if o.output != "text" && o.output != "json" {
		return fmt.Errorf("--output %q: want text or json", o.output)
	}
	if o.since < 0 {
		return fmt.Errorf("--since %s: must not be negative", o.since)
	}
	if o.limit < 0 {
		return fmt.Errorf("--limit %d: must not be negative", o.limit)
	}
	return o.nats.dialConfig("").Validate()
}

// globRegexp compiles a glob where * is any run of characters (dots and
// slashes included) and ? is one character.
func globRegexp(glob string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	for _, r := range glob {
		switch r {
		case '*':
			b.WriteString(".*")
		case '?':
			b.WriteString(".")
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

func (o *tailOptions) run(ctx context.Context, stdout, stderr io.Writer) error {
	nc, err := bus.Dial(o.nats.dialConfig("tidemark events tail"))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	stream := bus.StreamEvents
	if o.deadLetters {
		stream = bus.StreamDeadLetter
	}
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy}
	if o.since > 0 {
		start := time.Now().Add(-o.since)
		cfg.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		cfg.OptStartTime = &start
	}
	cons, err := js.OrderedConsumer(ctx, stream, cfg)
	if err != nil {
		return fmt.Errorf("following %s (is `tidemark serve` running, and --nats-url right?): %w", stream, err)
	}
	iter, err := cons.Messages()
	if err != nil {
		return err
	}
	defer iter.Stop()
	typeRe, subjectRe := globRegexp(o.typeGlob), globRegexp(o.subjectGlob)
	printed := 0
	for {
		msg, err := iter.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return err
			}
			fmt.Fprintln(stderr, "tidemark: waiting for events:", err)
			continue
		}
		ev, err := cenats.Decode(ctx, &nats.Msg{Subject: msg.Subject(), Header: msg.Headers(), Data: msg.Data()})
		if err != nil {
			fmt.Fprintf(stderr, "tidemark: skipping an undecodable message on %s: %v\n", msg.Subject(), err)
			continue
		}
		if !typeRe.MatchString(string(ev.Type())) || !subjectRe.MatchString(ev.Subject) {
			continue
		}
		if err := printEvent(stdout, ev, o.output); err != nil {
			return err
		}
		printed++
		if o.limit > 0 && printed >= o.limit {
			return nil
		}
	}
}

func printEvent(w io.Writer, ev events.Event, output string) error {
	if output == "json" {
		ce, err := ev.ToCloudEvent()
		if err != nil {
			return err
		}
		line, err := json.Marshal(ce)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", line)
		return err
	}
	data, err := json.Marshal(ev.Data)
	if err != nil {
		return err
	}
	run := ""
	if ev.CorrelationID != "" {
		run = " run=" + ev.CorrelationID
	}
	_, err = fmt.Fprintf(w, "%s  %-42s %s%s  %s\n", ev.Time.UTC().Format(time.RFC3339Nano), ev.Type(), ev.Subject, run, data)
	return err
}

type publishOptions struct {
	nats        natsOptions
	subject     string
	data        string
	correlation string
}

func newEventsPublishCommand() *cobra.Command {
	o := &publishOptions{}
	cmd := &cobra.Command{
		Use:   "publish TYPE",
		Short: "Publish one event (checked against its schema first)",
		Long: `Publish one event of a catalogue type, for scripts and demos. --data is the
JSON payload; it is checked against the type's JSON Schema before anything is
sent, and a violation names the field. "tidemark events types" lists the types.`,
		Example: `  tidemark events publish io.tidemark.backup.requested.v1 --subject shop/postgres \
    --data '{"application":"shop/postgres","requestedBy":"alice"}'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ev, err := o.event(events.Type(args[0]))
			if err != nil {
				return usageError{err}
			}
			nc, err := bus.Dial(o.nats.dialConfig("tidemark events publish"))
			if err != nil {
				return err
			}
			defer nc.Close()
			b, err := bus.New(nc, bus.WithSource("tidemark/cli"))
			if err != nil {
				return err
			}
			ack, err := b.Publish(cmd.Context(), ev)
			if err != nil {
				return err
			}
			if ack.Duplicate {
				fmt.Fprintf(cmd.OutOrStdout(), "%s was already stored; the duplicate was dropped\n", ev.ID)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "published %s %s to %s #%d\n", ev.Type(), ev.ID, ack.Stream, ack.Sequence)
			return nil
		},
	}
	o.nats.register(cmd, defaultNATSURL, "NATS server URLs, comma-separated")
	cmd.Flags().StringVar(&o.subject, "subject", "", "the event's subject: the application or run it is about")
	cmd.Flags().StringVar(&o.data, "data", "", "the payload as JSON")
	cmd.Flags().StringVar(&o.correlation, "correlation-id", "", "the run this event belongs to")
	return cmd
}

func (o *publishOptions) event(t events.Type) (events.Event, error) {
	if _, ok := events.Lookup(t); !ok {
		return events.Event{}, fmt.Errorf("unknown event type %q (see tidemark events types)", t)
	}
	if o.data == "" {
		return events.Event{}, errors.New("--data is empty; give the payload as JSON")
	}
	if err := o.nats.dialConfig("").Validate(); err != nil {
		return events.Event{}, err
	}
	p, err := events.DecodePayload(t, []byte(o.data))
	if err != nil {
		return events.Event{}, fmt.Errorf("--data: %w", err)
	}
	ev := events.New("tidemark/cli", o.subject, p, time.Now())
	ev.CorrelationID = o.correlation
	return ev, nil
}

func newEventsTypesCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "types",
		Short: "List every event type with its kind and subject",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "TYPE\tKIND\tNATS SUBJECT\tSUMMARY")
			for _, d := range events.All() {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", d.Type, d.Kind, d.Subject(), d.Summary)
			}
			return w.Flush()
		},
	}
}
