# Grant latency of the durable pool (RocksDB, synced group commit)
# against open-loop offered load; written by nodepool bench --plot.
set terminal pngcairo size 900,560 noenhanced
set output 'grant_latency.png'
set title sprintf('nodepool grant latency vs offered load (saturation %.0f cycles/s)', 25519)
set xlabel 'offered load (share of saturation cycles/s)'
set ylabel 'grant latency (ms)'
set logscale y
set grid
set key top left
set xrange [0:1]
set yrange [0.5:*]
plot 'grant_latency.dat' using 1:4 with linespoints title 'p50', \
     '' using 1:5 with linespoints title 'p99', \
     '' using 1:6 with linespoints title 'p99.9', \
     1 with lines dashtype 2 title 'target: p99 < 1 ms at 0.5'
