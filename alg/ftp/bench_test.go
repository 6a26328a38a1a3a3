package ftp

import (
	"bytes"
	"strings"
	"testing"
)

// A typical client session's commands and a typical server's replies.
var (
	benchCommands = strings.Join([]string{
		"USER anonymous", "PASS ftpalg@", "SYST", "FEAT", "PWD", "TYPE I",
		"PASV", "SIZE hello.txt", "RETR hello.txt", "EPSV", "LIST",
		"PORT 192,0,2,1,156,64", "STOR pub/up.txt", "NOOP", "QUIT",
	}, "\r\n") + "\r\n"
	benchReplies = "220 (vsFTPd 3.0.3)\r\n" +
		"211-Features:\r\n EPRT\r\n EPSV\r\n MDTM\r\n PASV\r\n REST STREAM\r\n SIZE\r\n TVFS\r\n211 End\r\n" +
		"230 Login successful.\r\n" +
		"257 \"/\" is the current directory\r\n" +
		"200 Switching to Binary mode.\r\n" +
		"227 Entering Passive Mode (192,0,2,1,156,64).\r\n" +
		"150 Opening BINARY mode data connection for hello.txt (29 bytes).\r\n" +
		"226 Transfer complete.\r\n" +
		"229 Entering Extended Passive Mode (|||40000|)\r\n" +
		"221 Goodbye.\r\n"
)

// BenchmarkReadLineParseCommand reads and parses a session's commands; one
// op is the whole session (15 lines).
func BenchmarkReadLineParseCommand(b *testing.B) {
	data := []byte(benchCommands)
	r := bytes.NewReader(data)
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		r.Reset(data)
		lr := NewLineReader(r, 0)
		for {
			line, err := lr.ReadLine()
			if err != nil {
				break
			}
			if _, err := ParseCommand(line); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkParseCommand is ParseCommand alone on a line with an argument.
func BenchmarkParseCommand(b *testing.B) {
	line := []byte("RETR pub/some-file.tar.gz\r\n")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseCommand(line); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReadReply reads a session's replies (10, one multi-line).
func BenchmarkReadReply(b *testing.B) {
	data := []byte(benchReplies)
	r := bytes.NewReader(data)
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		r.Reset(data)
		rr := NewReplyReader(r, 0, 0)
		for {
			if _, err := rr.ReadReply(); err != nil {
				break
			}
		}
	}
}

// BenchmarkFind227 parses the endpoint out of a 227 text.
func BenchmarkFind227(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, err := Find227("Entering Passive Mode (192,0,2,1,156,64)."); err != nil {
			b.Fatal(err)
		}
	}
}
