# Saturation throughput of the durable pool (synced group commit)
# against clients and against nodes; written by nodepool bench --plot.
set terminal pngcairo size 1100,480 noenhanced
set output 'throughput.png'
set multiplot layout 1,2 title 'nodepool: reservation cycles per second at saturation'
set grid
set key bottom right
set logscale x 2
set ylabel 'cycles/s'
set yrange [0:*]
set xlabel 'concurrent clients'
plot 'throughput_clients.dat' using 1:2 with linespoints lw 2 title 'durable pool, 1000 nodes'
set logscale x 10
set xlabel 'nodes in the pool'
plot 'throughput_nodes.dat' using 1:2 with linespoints lw 2 title 'durable pool, fresh process per size'
unset multiplot
