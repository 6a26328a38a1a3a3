package main

// Reading the configuration: the TOML file, then the flags over it.

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// loadConfig builds the configuration of `ftpalg run` from args: the
// defaults, then the file named by --config, then the flags, validated
// together. It returns the file's path ("" without one) and whether
// --check-config was given.
func loadConfig(args []string, fs *flag.FlagSet) (c Config, path string, check bool, err error) {
	// First pass: where the file is. The flags are parsed again below, over
	// the file's values.
	scratch := DefaultConfig()
	bindFlags(fs, &scratch, &path, &check)
	if err := parseFlags(fs, args); err != nil {
		return c, "", false, err
	}
	if fs.NArg() > 0 {
		return c, "", false, usagef("run: unexpected arguments %q", fs.Args())
	}
	c = DefaultConfig()
	var file []byte
	if path != "" {
		if file, err = os.ReadFile(path); err != nil {
			return c, path, check, usagef("reading the configuration: %w", err)
		}
		if err := decodeConfig(file, &c); err != nil {
			return c, path, check, usageError{withSource(err, path)}
		}
	}
	fs2 := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	fs2.SetOutput(io.Discard) // the first pass reported any flag error
	var p2 string
	var c2 bool
	bindFlags(fs2, &c, &p2, &c2)
	if err := fs2.Parse(args); err != nil {
		return c, path, check, err
	}
	c.fillDefaults()
	err = c.Validate()
	if err == nil {
		err = c.checkTLSFiles()
	}
	if err != nil {
		var ce *configError
		if errors.As(err, &ce) {
			fs2.Visit(func(f *flag.Flag) {
				if f.Name == ce.Key {
					ce.Flag = true
				}
			})
			if !ce.Flag && file != nil {
				ce.Src, ce.Line = path, keyLine(file, ce.Key)
			}
		}
		return c, path, check, usageError{err}
	}
	return c, path, check, nil
}

// readConfigFile reads, decodes and validates one file over the defaults
// (the reload path: no flags).
func readConfigFile(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("reading the configuration: %w", err)
	}
	c, err := parseConfig(b)
	if err != nil {
		return Config{}, withSource(err, path)
	}
	return c, nil
}

func withSource(err error, path string) error {
	var ce *configError
	if errors.As(err, &ce) {
		ce.Src = path
		return ce
	}
	return fmt.Errorf("%s: %w", path, err)
}

// configError is a bad key or value: Key is the flag or file key, Line its
// line in the file Src (0: not known); Flag says the value came from the
// command line.
type configError struct {
	Key  string
	Line int
	Msg  string
	Src  string
	Flag bool
}

func (e *configError) Error() string {
	switch {
	case e.Flag:
		return fmt.Sprintf("--%s: %s", e.Key, e.Msg)
	case e.Src != "" && e.Line > 0:
		return fmt.Sprintf("%s:%d: %s: %s", e.Src, e.Line, e.Key, e.Msg)
	case e.Src != "":
		return fmt.Sprintf("%s: %s: %s", e.Src, e.Key, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.Key, e.Msg)
}

// parseConfig decodes a TOML document over the defaults and validates it.
// Errors are *configError naming the key and, where known, the line.
func parseConfig(b []byte) (Config, error) {
	c := DefaultConfig()
	if err := decodeConfig(b, &c); err != nil {
		return c, err
	}
	c.fillDefaults()
	if err := c.Validate(); err != nil {
		var ce *configError
		if errors.As(err, &ce) {
			ce.Line = keyLine(b, ce.Key)
		}
		return c, err
	}
	return c, nil
}

// decodeConfig decodes a TOML document over c: syntax, unknown keys and
// mistyped values. Errors are *configError with the line.
func decodeConfig(b []byte, c *Config) error {
	// Durations must be strings: go-toml hands a TextUnmarshaler nothing
	// for an integer, which would silently keep the default.
	var raw map[string]any
	if err := toml.Unmarshal(b, &raw); err != nil {
		return tomlError(err)
	}
	for k, v := range raw {
		if _, isDur := durationKeys[k]; isDur {
			if _, ok := v.(string); !ok {
				return &configError{Key: k, Line: keyLine(b, k), Msg: fmt.Sprintf("want a duration in quotes such as \"30s\", not %v", v)}
			}
		}
	}
	d := toml.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(c); err != nil {
		return tomlError(err)
	}
	return nil
}

var durationKeys = func() map[string]struct{} {
	m := map[string]struct{}{}
	c := DefaultConfig()
	for _, o := range options {
		if _, ok := o.bind(&c).(*Duration); ok {
			m[o.name] = struct{}{}
		}
	}
	return m
}()

// tomlError turns a go-toml error into a configError with its line.
func tomlError(err error) error {
	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, _ := de.Position()
		key := strings.Join(de.Key(), ".")
		msg := strings.TrimPrefix(de.Error(), "toml: ")
		switch msg {
		case "unknown field":
			msg = "unknown key (see `ftpalg run -h` for the keys)"
			if near := nearestKey(key); near != "" {
				msg = fmt.Sprintf("unknown key; did you mean %s?", near)
			}
		case "missing table":
			msg = "unknown table (the file has no tables: its keys are the flag names)"
		}
		if m := typeErr.FindStringSubmatch(msg); m != nil {
			want := map[string]string{"int": "a whole number", "bool": "true or false", "[]string": "a list of strings, [\"a\", \"b\"]"}[m[2]]
			if want == "" {
				want = "a string in quotes"
			}
			msg = fmt.Sprintf("want %s, not a TOML %s", want, m[1])
		}
		if key == "" {
			key = "syntax"
		}
		return &configError{Key: key, Line: line, Msg: msg}
	}
	var se *toml.StrictMissingError
	if errors.As(err, &se) && len(se.Errors) > 0 {
		return tomlError(&se.Errors[0])
	}
	return &configError{Key: "syntax", Msg: err.Error()}
}

var typeErr = regexp.MustCompile(`cannot decode TOML (\w+) into struct field \S+ of type (\S+)`)

// keyLine is the line of the first "key =" in a TOML document, 0 if none.
func keyLine(b []byte, key string) int {
	re := regexp.MustCompile(`^\s*"?` + regexp.QuoteMeta(key) + `"?\s*=`)
	for i, l := range strings.Split(string(b), "\n") {
		if re.MatchString(l) {
			return i + 1
		}
	}
	return 0
}

// nearestKey is the option name within two edits of key ("" if none or
// several are): a typo gets a suggestion.
func nearestKey(key string) string {
	names := make([]string, len(options))
	for i, o := range options {
		names[i] = o.name
	}
	return nearest(key, names)
}

// nearest is the one name within two edits of s, or "".
func nearest(s string, names []string) string {
	best, n, tie := "", 3, false
	for _, name := range names {
		switch d := editDistance(s, name); {
		case d < n:
			best, n, tie = name, d, false
		case d == n:
			tie = true
		}
	}
	if tie {
		return ""
	}
	return best
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
