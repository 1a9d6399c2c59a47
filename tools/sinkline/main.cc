// sinkline: the operator command (see docs/operations.md).
#include "tools/sinkline/commands.h"

int main(int argc, char** argv) { return sinkline::cli::Main(argc, argv); }
