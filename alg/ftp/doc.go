// Package ftp is the FTP control-channel codec of ftpalg: it reads command
// and reply lines from a stream with bounded memory, assembles RFC 959
// multi-line replies, and parses and formats the data-channel announcements
// PORT and 227 ("h1,h2,h3,h4,p1,p2"), EPRT ("|1|addr|port|", RFC 2428) and
// 229 ("(|||port|)").
//
// The package is pure: it does no I/O beyond the io.Reader it is handed, and
// it knows nothing about sockets, NAT or firewalls. Every parser is strict
// (each number range-checked, nothing malformed accepted) and fuzzed.
//
// Typical usage on the client side of a proxy:
//
//	lr := ftp.NewLineReader(client, ftp.DefaultMaxLine)
//	for {
//		line, err := lr.ReadLine() // raw line incl. terminator
//		if err != nil {
//			return err // io.EOF, ErrLineTooLong, ErrNUL, ...
//		}
//		cmd, err := ftp.ParseCommand(line)
//		if err != nil {
//			return err // errors.Is(err, ftp.ErrSyntax)
//		}
//		if cmd.Verb == "PORT" {
//			ap, err := ftp.ParsePORT(cmd.Arg)
//			...
//		}
//		// forward line (or a rewritten one) to the server
//	}
//
// and on the server side:
//
//	rr := ftp.NewReplyReader(server, ftp.DefaultMaxLine, 0)
//	reply, err := rr.ReadReply()
//	if reply.Code == 227 {
//		ap, start, end, err := ftp.Find227(reply.Text())
//		...
//	}
package ftp
