#!/bin/sh
echo "Globex kiosk 3.2"
