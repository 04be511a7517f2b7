package main

import (
	"errors"
	"fmt"
	"strings"
)

func (d *demo) interrupted() error {
	if d.ctx.Err() != nil {
		return errors.New("interrupted")
	}
	return nil
}

func (d *demo) section(title string) {
	fmt.Fprintf(d.out, "\n%s\n", d.bold("== "+title))
}

func (d *demo) indent(s string) {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return
	}
	for _, l := range strings.Split(s, "\n") {
		fmt.Fprintf(d.out, "    %s\n", strings.TrimRight(l, " "))
	}
}

func (d *demo) verdict(ok bool, msg string) {
	d.checks++
	if ok {
		fmt.Fprintf(d.out, "  %s %s\n", d.green("✔"), msg)
		return
	}
	d.bad++
	fmt.Fprintf(d.out, "  %s %s\n", d.red("✘"), d.red(msg+"  <- unexpected"))
}

func upDown(up bool) string {
	if up {
		return "up"
	}
	return "down"
}

func orNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ",")
}

func okWord(asExpected bool, yes, no string) string {
	if asExpected {
		return yes + ", as expected"
	}
	return no
}

func (d *demo) paint(code, s string) string {
	if !d.color {
		return s
	}
	return "\x1b[" + code + "m" + s + "\x1b[0m"
}

func (d *demo) bold(s string) string   { return d.paint("1", s) }
func (d *demo) dim(s string) string    { return d.paint("2", s) }
func (d *demo) green(s string) string  { return d.paint("32", s) }
func (d *demo) red(s string) string    { return d.paint("31", s) }
func (d *demo) yellow(s string) string { return d.paint("33", s) }
