from blockllm.cli import main

main()
