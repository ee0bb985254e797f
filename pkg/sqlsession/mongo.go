package sqlsession

import (
	"context"
	"fmt"
	"sort"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/connstring"
)

// mongoBackend runs database commands written as MongoDB Extended JSON,
// such as {"fsyncLock": 1} and {"fsyncUnlock": 1}. fsyncLock is not bound
// to a session, unlike FTWRL: the lock outlives this client, which is why a
// blueprint's unlock inverse is mandatory for MongoDB.
type mongoBackend struct {
	client *mongo.Client
	db     string
}

func openMongo(ctx context.Context, uri string) (*mongoBackend, error) {
	cs, err := connstring.ParseAndValidate(uri)
	if err != nil {
		return nil, fmt.Errorf("dsn is not a mongodb:// URI: %w", err)
	}
	db := cs.Database
	if db == "" {
		// fsyncLock and friends are admin commands.
		db = "admin"
	}
	client, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		return nil, err
	}
	// Connect is lazy; a backup must know now that the server answers.
	if err := client.Ping(ctx, nil); err != nil {
		_ = client.Disconnect(context.Background())
		return nil, err
	}
	return &mongoBackend{client: client, db: db}, nil
}

// parseCommand reads one statement as an ordered command document: the
// command's name must come first, so the order of the JSON is kept.
func parseCommand(stmt string) (bson.D, error) {
	var cmd bson.D
	if err := bson.UnmarshalExtJSON([]byte(stmt), false, &cmd); err != nil {
		return nil, fmt.Errorf("a mongodb statement is a command in Extended JSON, such as {\"fsyncLock\": 1}: %w", err)
	}
	if len(cmd) == 0 {
		return nil, fmt.Errorf("empty command document")
	}
	return cmd, nil
}

func (b *mongoBackend) run(ctx context.Context, stmt string) (map[string]string, error) {
	cmd, err := parseCommand(stmt)
	if err != nil {
		return nil, err
	}
	var reply bson.M
	if err := b.client.Database(b.db).RunCommand(ctx, cmd).Decode(&reply); err != nil {
		return nil, err
	}
	return flattenReply(reply), nil
}

// flattenReply turns a command reply's top-level fields into outputs.
func flattenReply(reply bson.M) map[string]string {
	keys := make([]string, 0, len(reply))
	for k := range reply {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		switch v := reply[k].(type) {
		case string:
			out[k] = v
		case bson.D, bson.M, bson.A:
			b, err := bson.MarshalExtJSON(bson.M{"v": v}, false, false)
			if err == nil {
				out[k] = string(b[len(`{"v":`) : len(b)-1])
			}
		default:
			out[k] = fmt.Sprint(v)
		}
	}
	return out
}

func (b *mongoBackend) ping(ctx context.Context) error { return b.client.Ping(ctx, nil) }

func (b *mongoBackend) close() error { return b.client.Disconnect(context.Background()) }
