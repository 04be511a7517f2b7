package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// output is the -o flag of the verbs that print resources: a table for
// people, or the API's messages as JSON (protojson's field names) or YAML
// (the same fields).
type output string

var outputs = []string{"table", "json", "yaml"}

func (o *output) String() string { return string(*o) }
func (o *output) Type() string   { return "format" }

func (o *output) Set(s string) error {
	for _, f := range outputs {
		if s == f {
			*o = output(s)
			return nil
		}
	}
	return fmt.Errorf("want table, json or yaml")
}

// addOutput defines -o/--output on cmd.
func addOutput(cmd *cobra.Command) *output {
	o := output("table")
	cmd.Flags().VarP(&o, "output", "o", "output format: table, json or yaml")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(outputs, cobra.ShellCompDirectiveNoFileComp))
	return &o
}

// print writes m as JSON or YAML, or calls table.
func (o output) print(w io.Writer, m proto.Message, table func(io.Writer) error) error {
	switch o {
	case "json":
		b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
		if err != nil {
			return fmt.Errorf("marshal %s: %w", m.ProtoReflect().Descriptor().Name(), err)
		}
		_, err = fmt.Fprintln(w, string(b))
		return err
	case "yaml":
		b, err := toYAML(m)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	return table(w)
}

// toYAML renders m as YAML with protojson's field names and values.
func toYAML(m proto.Message) ([]byte, error) {
	j, err := protojson.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("marshal %s: %w", m.ProtoReflect().Descriptor().Name(), err)
	}
	y, err := yaml.JSONToYAML(j)
	if err != nil {
		return nil, fmt.Errorf("convert %s to YAML: %w", m.ProtoReflect().Descriptor().Name(), err)
	}
	return y, nil
}
