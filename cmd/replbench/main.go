// Command replbench runs replproxy next to the alternatives on real
// redis-server processes: the demo, and side-by-side benchmark scenarios.
package main

import (
	"fmt"
	"io"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	for _, sc := range scenarios {
		if sc.name == args[0] {
			return runScenario(sc, args[1:], stdout, stderr)
		}
	}
	switch args[0] {
	case "all":
		for _, sc := range scenarios {
			if code := runScenario(sc, args[1:], stdout, stderr); code != 0 {
				return code
			}
		}
		return 0
	case "demo":
		return demo(args[1:], stdout, stderr)
	case "chaos":
		return chaosCmd(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "replbench: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, "Usage: replbench COMMAND [flags]\n\nCommands:\n")
	fmt.Fprintf(w, "  %-8s  %s\n", "demo", "origin -> replproxy -> stock replicas on loopback, with a live status table")
	for _, sc := range scenarios {
		fmt.Fprintf(w, "  %-8s  %s\n", sc.name, sc.help)
	}
	fmt.Fprintf(w, "  %-8s  %s\n", "all", "every scenario in turn, with the same flags")
	fmt.Fprintf(w, "  %-8s  %s\n", "chaos", "randomized combined faults with an invariant checker (--seed, --runs, --duration)")
	fmt.Fprint(w, "\nCommon flags: --replicas N --dataset SIZE --duration D --rate N --out DIR\n")
}
