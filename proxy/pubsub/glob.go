package pubsub

// GlobMatch is Redis' stringmatchlen: *, ?, [set], [^set], [a-z] and \
// escapes, over bytes.
func GlobMatch(pat, str []byte) bool {
	for len(pat) > 0 {
		switch pat[0] {
		case '*':
			for len(pat) > 1 && pat[1] == '*' {
				pat = pat[1:]
			}
			if len(pat) == 1 {
				return true
			}
			for i := 0; i <= len(str); i++ {
				if GlobMatch(pat[1:], str[i:]) {
					return true
				}
			}
			return false
		case '?':
			if len(str) == 0 {
				return false
			}
			str = str[1:]
		case '[':
			if len(str) == 0 {
				return false
			}
			pat = pat[1:]
			not := len(pat) > 0 && pat[0] == '^'
			if not {
				pat = pat[1:]
			}
			match := false
			for len(pat) > 0 && pat[0] != ']' {
				switch {
				case pat[0] == '\\' && len(pat) >= 2:
					pat = pat[1:]
					if pat[0] == str[0] {
						match = true
					}
				case len(pat) >= 3 && pat[1] == '-':
					lo, hi := pat[0], pat[2]
					if lo > hi {
						lo, hi = hi, lo
					}
					if str[0] >= lo && str[0] <= hi {
						match = true
					}
					pat = pat[2:]
				case pat[0] == str[0]:
					match = true
				}
				pat = pat[1:]
			}
			if len(pat) == 0 { // an unterminated set: Redis treats its end as ']'
				pat = []byte{']'}
			}
			if match == not {
				return false
			}
			str = str[1:]
		case '\\':
			if len(pat) >= 2 {
				pat = pat[1:]
			}
			fallthrough
		default:
			if len(str) == 0 || pat[0] != str[0] {
				return false
			}
			str = str[1:]
		}
		pat = pat[1:]
	}
	return len(str) == 0
}
