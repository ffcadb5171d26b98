package vocab

import "strings"

// Identity is who a replica authenticated as.
type Identity struct {
	User string // the ACL user; "" when it never authenticated
	CN   string // the CN of its verified TLS client certificate; "" without one
}

func (id Identity) String() string {
	parts := []string{"user:" + orNone(id.User)}
	if id.CN != "" {
		parts = append(parts, "cn:"+id.CN)
	}
	return strings.Join(parts, ",")
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// Candidate is a replica to ask for a snapshot; one that came over
// TLS announced its TLS port (Redis does with tls-replication yes).
type Candidate struct {
	Addr string
	TLS  bool
	ID   Identity // who it authenticated as
}
