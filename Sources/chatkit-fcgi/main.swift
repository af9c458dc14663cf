import ChatKitFCGI
import Glibc

exit(ChatKitCommand.run(CommandLine.arguments))
