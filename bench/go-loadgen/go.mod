module moodio-rt/go-loadgen

go 1.19
