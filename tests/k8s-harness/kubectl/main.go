// Command kubectl is upstream kubectl (k8s.io/kubectl, version pinned in
// go.mod), built for the bridge's end-to-end tests, which drive it against
// the harness's control plane as a user would.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	root := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(root); err != nil {
		util.CheckErr(err) // prints the error as kubectl does, exits non-zero
	}
	os.Exit(0)
}
