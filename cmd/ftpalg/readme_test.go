package main

import (
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestReadmeCommandsExist follows the README literally: every `ftpalg
// <command> ...` it shows (in code blocks, continuation lines joined, and
// inline) names a command that exists, and every --flag on it is one that
// command's -h lists.
func TestReadmeCommandsExist(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(b), "\\\n", " ")
	helpFlags := map[string]map[string]bool{}
	flagsOf := func(cmd string) map[string]bool {
		if m, ok := helpFlags[cmd]; ok {
			return m
		}
		var out strings.Builder
		if code := mainErr([]string{cmd, "-h"}, &out, io.Discard); code != 0 {
			t.Fatalf("ftpalg %s -h: exit %d", cmd, code)
		}
		m := map[string]bool{}
		for _, f := range regexp.MustCompile(`(?m)^\s+--?([a-z][a-z0-9-]*)`).FindAllStringSubmatch(out.String(), -1) {
			m[f[1]] = true
		}
		helpFlags[cmd] = m
		return m
	}
	// The code: fenced blocks and inline spans.
	var code []string
	for i, part := range strings.Split(text, "```") {
		if i%2 == 1 {
			code = append(code, strings.Split(part, "\n")...)
			continue
		}
		for j, span := range strings.Split(part, "`") {
			if j%2 == 1 {
				code = append(code, span)
			}
		}
	}
	cmdRe := regexp.MustCompile(`(?:^|[\s/])ftpalg ([a-z]+)([^#]*)`)
	flagRe := regexp.MustCompile(`(?:^|\s|\[)--([a-z][a-z0-9-]*)`)
	seen := 0
	for _, line := range code {
		line, _, _ = strings.Cut(line, "#") // a shell comment is prose
		m := cmdRe.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		cmd, args := m[1], m[2]
		if _, ok := commands[cmd]; !ok {
			t.Errorf("README: `ftpalg %s`: no such command", cmd)
			continue
		}
		for _, f := range flagRe.FindAllStringSubmatch(args, -1) {
			seen++
			if !flagsOf(cmd)[f[1]] {
				t.Errorf("README: `ftpalg %s ... --%s`: ftpalg %s -h lists no --%s", cmd, f[1], cmd, f[1])
			}
		}
	}
	if seen < 20 {
		t.Errorf("only %d flags found in the README's commands: the pattern is broken", seen)
	}
}
