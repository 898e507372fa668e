# nodepool beside a reservation table on etcd; written by nodepool bench --plot.
set terminal pngcairo size 1100,480 noenhanced
set output 'etcd.png'
set multiplot layout 1,2 title 'nodepool and etcd, 3 members each, heartbeat 50 ms, election timeout 400 ms'
set grid
set style fill solid 0.6
set boxwidth 0.5
set logscale y
set ylabel 'reservation cycles/s (log)'
set yrange [10:*]
plot 'etcd_cycles.dat' using 0:2:xtic(1) with boxes notitle
unset logscale y
set yrange [0:*]
set xlabel 'kills, sorted by time'
set ylabel 'ms from kill -9 of the leader to a write'
set key top left
plot 'etcd_failover.dat' using 1:($2 >= 0 ? $2 : NaN) with linespoints lw 2 title 'nodepool: first grant', \
     'etcd_failover.dat' using 1:($3 >= 0 ? $3 : NaN) with linespoints lw 2 title 'etcd: first reservation'
unset multiplot
