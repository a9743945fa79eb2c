module zephllm

go 1.19
